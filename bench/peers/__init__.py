"""`make bench-peers`: the service beside MLServer, BentoML and LitServe on the same model (see __main__)."""
