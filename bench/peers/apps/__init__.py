"""Code the peer servers run, each in its own venv (bench/peers/requirements/): only numpy, onnxruntime
and that server's package may be imported here. The modules import each other as top-level modules
(the servers get this folder on PYTHONPATH)."""
