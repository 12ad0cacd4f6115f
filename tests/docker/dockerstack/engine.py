"""Create the resources a Pulumi stack registers on a real Docker engine, as pulumi-docker would.

Input: the graph the real program registers for a real stack file (tests/infra/stack_runner.py:
every resource with the inputs the engine receives and the outputs its provider returns), in
registration order, which follows the program's dependencies. Each docker resource is created with
the Docker SDK the way the provider (terraform-provider-docker) does it: networks, volumes, images,
then containers created, given their uploads, started, and waited on until healthy when the
program sets ``wait``. Every container input the program sets is translated; one the harness does
not know stops the run, so nothing is silently dropped.

Host ports can be remapped to free loopback ports (``ports="free"``) so that runs never collide.
"""
from __future__ import annotations

import base64
import io
import re
import socket
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from docker.types import Healthcheck, Mount
from pulumi_graph import CONTAINER, IMAGE, NETWORK, REMOTE_IMAGE, VOLUME, reveal

from .images import Images

INFRA = Path(__file__).resolve().parents[3] / "infra"

# Resources that only compute values (their outputs are already in the graph).
COMPUTED = {"random:index/randomPassword:RandomPassword", "tls:index/privateKey:PrivateKey",
            "tls:index/selfSignedCert:SelfSignedCert"}

# Container inputs translated below; anything else fails the run.
CONTAINER_INPUTS = {"name", "hostname", "image", "command", "entrypoint", "envs", "user", "workingDir", "labels",
                    "ports", "volumes", "uploads", "networksAdvanced", "healthcheck", "restart", "maxRetryCount",
                    "memory", "cpus", "stopTimeout", "stopSignal", "wait", "waitTimeout", "mustRun", "start",
                    "attach", "logs", "mounts", "pidMode",
                    "init", "readOnly", "tmpfs", "capabilities"}


HEALTHY_TIMEOUT = 180.0  # seconds a container may take to turn healthy


class EngineError(Exception):
    """The stack cannot be created as the program asks; the message names what and why."""


@dataclass
class Deployment:
    """What one run created, in creation order (teardown removes it in reverse)."""
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    containers: dict[str, str] = field(default_factory=dict)  # logical name -> container name
    jobs: dict[str, str] = field(default_factory=dict)  # one-shot containers (attach): logical -> name
    skipped: dict[str, str] = field(default_factory=dict)  # logical name -> why it was not run
    # (container name, "443/tcp") -> (host ip, host port)
    ports: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # image reference -> image id
    seconds_to_healthy: float = 0.0  # first container created -> every container healthy

    def to_json(self) -> dict:
        return {"networks": self.networks, "volumes": self.volumes, "containers": self.containers, "jobs": self.jobs,
                "skipped": self.skipped, "images": self.images,
                "ports": [[c, p, ip, hp] for (c, p), (ip, hp) in self.ports.items()]}

    @classmethod
    def from_json(cls, data: dict) -> "Deployment":
        return cls(networks=data["networks"], volumes=data["volumes"], containers=data["containers"],
                   jobs=data.get("jobs", {}),
                   skipped=data["skipped"], images=data.get("images", {}),
                   ports={(c, p): (ip, hp) for c, p, ip, hp in data["ports"]})


def duration_ns(text: str) -> int:
    """Go duration ("1m30s", "500ms", "5s") -> nanoseconds, as the provider parses healthcheck times."""
    units = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise EngineError(f"cannot read duration {text!r}")
    return int(sum(float(n) * units[u] for n, u in parts))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return True
    return False


def _tar_one(path: str, content: bytes, mode: int) -> bytes:
    """A tar holding one file at absolute ``path``, owned by root (as the provider uploads)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode, info.mtime = len(content), mode, int(time.time())
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def log(message: str) -> None:
    print(f"[engine] {message}", file=sys.stderr, flush=True)


class Engine:
    """Creates a recorded stack on ``client``'s engine; ``ports``: "exact" (as the stack file says;
    a taken port is an error) or "free" (each published port moved to a free 127.0.0.1 port)."""

    def __init__(self, client: docker.DockerClient, images: Images, ports: str = "exact"):
        if ports not in ("exact", "free"):
            raise ValueError("ports must be 'exact' or 'free'")
        self.client = client
        self.images = images
        self.port_policy = ports
        self.by_output: dict[str, str] = {}  # provider output value (image id/digest) -> real image id

    # -- the whole stack ---------------------------------------------------------------------
    def up(self, resources: list[dict], deployment: Deployment) -> Deployment:
        """Create ``resources``, recording each in ``deployment`` as soon as it exists (so a failure
        part-way can be torn down by the caller). Images first (they depend on nothing), so that
        ``deployment.seconds_to_healthy`` times the containers alone."""
        self._check_inputs(resources)
        self._images(resources, deployment)
        started = time.monotonic()
        for r in resources:
            typ, inputs = r["type"], reveal(r["inputs"])
            if typ == NETWORK:
                self._network(inputs, deployment)
            elif typ == VOLUME:
                self._volume(inputs, deployment)
            elif typ == CONTAINER:
                self._container(r["name"], inputs, deployment)
            elif typ in (REMOTE_IMAGE, IMAGE) or typ in COMPUTED or not r["custom"]:
                continue  # done above, or only computes values / groups children (components)
            else:
                raise EngineError(f"resource {r['name']} of type {typ} is not translated by {__name__}")
        for name in deployment.containers.values():
            self.wait_healthy(name, HEALTHY_TIMEOUT)
        deployment.seconds_to_healthy = time.monotonic() - started
        return deployment

    def _images(self, resources: list[dict], deployment: Deployment) -> None:
        """Build or tag every image the resources name (images depend on nothing)."""
        for r in resources:
            if r["type"] == REMOTE_IMAGE:
                self._remote_image(reveal(r["inputs"]), r["outputs"], deployment)
            elif r["type"] == IMAGE:
                self._image(reveal(r["inputs"]), r["outputs"], deployment)

    def replace(self, old: list[dict], new: list[dict], deployment: Deployment) -> list[str]:
        """Apply ``new`` (the program's resources after a config change) over ``old``, as `pulumi up`
        does: images (re)built, new containers created, containers whose inputs changed replaced —
        delete-before-replace when the program asks for it (fixed names, host ports), else
        create-before-delete: the changed replicas are created side by side (Pulumi walks independent
        resources in parallel), each waited on until healthy, and the old ones are deleted last.
        Returns the logical names replaced."""
        self._check_inputs(new)
        self._images(new, deployment)
        before = {r["name"]: reveal(r["inputs"]) for r in old if r["type"] == CONTAINER}
        replaced, side_by_side = [], []
        for r in new:
            if r["type"] != CONTAINER:
                continue
            logical, inputs = r["name"], reveal(r["inputs"])
            if before.get(logical) == inputs:
                continue
            if logical in before:
                replaced.append(logical)
                if not r.get("options", {}).get("deleteBeforeReplace"):
                    side_by_side.append((logical, inputs))
                    continue
                self._remove(deployment, logical)
            self._container(logical, inputs, deployment)
        retired = [deployment.containers.get(logical) or deployment.jobs[logical] for logical, _ in side_by_side]
        with ThreadPoolExecutor(max_workers=max(1, len(side_by_side))) as pool:
            # Each on a scratch record: the threads must not share one; the names are known anyway.
            for future in [pool.submit(self._container, logical, inputs, Deployment())
                           for logical, inputs in side_by_side]:
                future.result()  # waited on until healthy (wait=true); raises what went wrong
        for logical, inputs in side_by_side:
            deployment.containers[logical] = inputs["name"]
        for old_name in retired:
            self._stop_and_remove(old_name)
        return replaced

    def _remove(self, deployment: Deployment, logical: str) -> None:
        name = deployment.containers.pop(logical, None) or deployment.jobs.pop(logical, None)
        if name:
            self._stop_and_remove(name)

    def _stop_and_remove(self, name: str) -> None:
        """As the provider deletes a container: stop it (its stop timeout, so SIGTERM is handled), remove it."""
        try:
            c = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        c.stop(timeout=c.attrs["Config"].get("StopTimeout") or 10)
        c.remove(force=True)

    def recreate(self, resources: list[dict], logical: str, deployment: Deployment, on_removed=None) -> str:
        """Remove container ``logical`` and create it again from its recorded inputs (volumes kept),
        as `pulumi up` does when a container is replaced (``on_removed()`` runs in between).
        Returns its name."""
        r = next(r for r in resources if r["type"] == CONTAINER and r["name"] == logical)
        for image in resources:  # the images this run built, by the ids the program refers to them
            ref = image["inputs"].get("name") or image["inputs"].get("imageName")
            if image["type"] in (REMOTE_IMAGE, IMAGE) and ref in deployment.images:
                for key in ("imageId", "repoDigest"):
                    if key in image["outputs"]:
                        self.by_output[image["outputs"][key]] = deployment.images[ref]
        name = deployment.containers.pop(logical)
        self.client.containers.get(name).remove(force=True)
        if on_removed is not None:
            on_removed()
        self._container(logical, reveal(r["inputs"]), deployment)
        self.wait_healthy(name, HEALTHY_TIMEOUT)
        return name

    def _check_inputs(self, resources: list[dict]) -> None:
        """Fail before creating anything when a container sets an input this harness ignores."""
        for r in resources:
            if r["type"] == CONTAINER:
                unknown = sorted(set(r["inputs"]) - CONTAINER_INPUTS)
                if unknown:
                    raise EngineError(f"container {r['name']} sets {', '.join(unknown)}, which "
                                      f"tests/docker/dockerstack/engine.py does not translate; add it there")

    def down(self, deployment: Deployment, keep_volumes: bool = False) -> None:
        for name in reversed(list(deployment.containers.values()) + list(deployment.jobs.values())):
            try:
                self.client.containers.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
        for name in reversed(deployment.networks):
            try:
                self.client.networks.get(name).remove()
            except docker.errors.NotFound:
                pass
        if not keep_volumes:
            for name in reversed(deployment.volumes):
                try:
                    self.client.volumes.get(name).remove(force=True)
                except docker.errors.NotFound:
                    pass

    # -- one resource each -------------------------------------------------------------------
    def _network(self, inputs: dict, deployment: Deployment) -> None:
        name = inputs["name"]
        labels = {item["label"]: item["value"] for item in inputs.get("labels", [])}
        self.client.networks.create(name, driver=inputs.get("driver", "bridge"),
                                    internal=bool(inputs.get("internal", False)), labels=labels,
                                    check_duplicate=True)
        deployment.networks.append(name)

    def _volume(self, inputs: dict, deployment: Deployment) -> None:
        name = inputs["name"]
        try:
            self.client.volumes.get(name)  # kept from an earlier run (KEEP_VOLUMES=1): reuse it
        except docker.errors.NotFound:
            labels = {item["label"]: item["value"] for item in inputs.get("labels", [])}
            self.client.volumes.create(name, driver=inputs.get("driver", "local"), labels=labels)
        deployment.volumes.append(name)

    def _remote_image(self, inputs: dict, outputs: dict, deployment: Deployment) -> None:
        ref = inputs["name"]
        if not self.images.buildable(ref):
            self.by_output[outputs["imageId"]] = f"unbuildable:{ref}"
            return
        image_id = self.images.ensure(ref)
        deployment.images[ref] = image_id
        self.by_output[outputs["imageId"]] = image_id
        self.by_output[outputs["repoDigest"]] = image_id

    def _image(self, inputs: dict, outputs: dict, deployment: Deployment) -> None:
        build = inputs.get("build") or {}
        unknown = sorted(set(build) - {"context", "dockerfile", "platform", "target"})
        if unknown:
            raise EngineError(f"image {inputs['imageName']}: build inputs {unknown} are not translated")
        context = (INFRA / build.get("context", ".")).resolve()
        dockerfile = (INFRA / build["dockerfile"]).resolve() if build.get("dockerfile") else context / "Dockerfile"
        image_id = self.images.build_service(inputs["imageName"], context, dockerfile, build.get("platform"),
                                             build.get("target"))
        deployment.images[inputs["imageName"]] = image_id
        self.by_output[outputs["repoDigest"]] = image_id

    def _container(self, logical: str, inputs: dict, deployment: Deployment) -> None:
        name = inputs["name"]
        image = self.by_output.get(inputs["image"])
        if image is None:
            raise EngineError(f"container {name}: image {inputs['image']!r} is no image of this stack")
        if image.startswith("unbuildable:"):
            ref = image.split(":", 1)[1]
            deployment.skipped[logical] = f"{ref}: {self.images.why_not(ref)}"
            log(f"not running {name}: {deployment.skipped[logical]}")
            return
        if not inputs.get("start", True):
            raise EngineError(f"container {name}: start=false is not translated")

        host_config, port_bindings = self._host_config(name, inputs)
        networks = inputs.get("networksAdvanced", [])
        first = networks[0] if networks else None
        networking = None
        if first is not None:
            networking = self.client.api.create_networking_config(
                {first["name"]: self.client.api.create_endpoint_config(aliases=first.get("aliases"))})
        created = self.client.api.create_container(
            image, name=name, hostname=inputs.get("hostname"), command=inputs.get("command"),
            entrypoint=inputs.get("entrypoint"), environment=inputs.get("envs"), user=inputs.get("user"),
            working_dir=inputs.get("workingDir"),
            labels={item["label"]: item["value"] for item in inputs.get("labels", [])},
            ports=[tuple(p.split("/")) for p in port_bindings] or None,
            healthcheck=self._healthcheck(inputs.get("healthcheck")),
            stop_signal=inputs.get("stopSignal"), stop_timeout=int(inputs["stopTimeout"]) if "stopTimeout" in inputs else None,
            host_config=host_config, networking_config=networking)
        attach = bool(inputs.get("attach"))
        (deployment.jobs if attach else deployment.containers)[logical] = name
        container = self.client.containers.get(created["Id"])
        for extra in networks[1:]:
            self.client.networks.get(extra["name"]).connect(container, aliases=extra.get("aliases"))
        for upload in inputs.get("uploads", []):
            container.put_archive("/", self._upload(name, upload))
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise EngineError(f"container {name} did not start: {exc.explanation or exc}") from None
        if attach:
            self._run_to_completion(container, float(inputs.get("waitTimeout", 600)))
            return
        container.reload()
        for port, bindings in (container.attrs["NetworkSettings"]["Ports"] or {}).items():
            for b in bindings or []:
                deployment.ports[(name, port)] = (b["HostIp"], int(b["HostPort"]))
        if inputs.get("wait"):
            self.wait_healthy(name, float(inputs.get("waitTimeout", 60)))

    @staticmethod
    def _run_to_completion(container, timeout: float) -> None:
        """attach=true: the provider waits for the exit; the program fails the deployment on a
        non-zero exit code (infra/service.py), so the harness stops here too."""
        try:
            code = container.wait(timeout=timeout)["StatusCode"]
        except Exception as exc:  # noqa: BLE001 — a timeout or a vanished container
            raise EngineError(f"one-shot container {container.name} did not finish in {timeout:.0f}s: {exc}") from None
        if code != 0:
            logs = container.logs(tail=20).decode(errors="replace").strip()
            raise EngineError(f"one-shot container {container.name} exited {code}:\n{logs}")
        log(f"{container.name} ran to completion: {container.logs(tail=3).decode(errors='replace').strip()}")

    def _host_config(self, name: str, inputs: dict):
        bindings: dict[str, tuple[str, int]] = {}
        for p in inputs.get("ports", []):
            key = f"{int(p['internal'])}/{p.get('protocol', 'tcp')}"
            ip, external = p.get("ip", "0.0.0.0"), p.get("external")
            external = None if external is None else int(external)
            if self.port_policy == "free":
                ip, external = "127.0.0.1", free_port()
            elif external is not None and port_taken(ip, int(external)):
                raise EngineError(f"host port {ip}:{external} (container {name}, {key}) is already taken: stop what "
                                  f"listens there, or run with STACK_PORTS=free to publish on free loopback ports")
            bindings[key] = (ip, external) if external is not None else (ip,)
        binds = {}
        for v in inputs.get("volumes", []):
            unknown = sorted(set(v) - {"volumeName", "hostPath", "containerPath", "readOnly"})
            if unknown:
                raise EngineError(f"container {name}: volume inputs {unknown} are not translated")
            source = v.get("volumeName") or v.get("hostPath")
            binds[source] = {"bind": v["containerPath"], "mode": "ro" if v.get("readOnly") else "rw"}
        mounts = []
        for m in inputs.get("mounts", []):
            unknown = sorted(set(m) - {"type", "source", "target", "readOnly", "bindOptions"})
            if unknown or m.get("type") != "bind":
                raise EngineError(f"container {name}: mount inputs {unknown or m.get('type')} are not translated")
            mounts.append(Mount(m["target"], m["source"], type="bind", read_only=bool(m.get("readOnly")),
                                propagation=(m.get("bindOptions") or {}).get("propagation")))
        restart = inputs.get("restart", "no")
        policy = {"Name": restart} if restart != "no" else None
        if policy and restart == "on-failure":
            policy["MaximumRetryCount"] = int(inputs.get("maxRetryCount", 0))
        caps = inputs.get("capabilities") or {}
        config = self.client.api.create_host_config(
            port_bindings=bindings or None, binds=binds or None, restart_policy=policy,
            mem_limit=f"{int(inputs['memory'])}m" if inputs.get("memory") else None,
            nano_cpus=int(float(inputs["cpus"]) * 1e9) if inputs.get("cpus") else None,
            init=inputs.get("init"), read_only=inputs.get("readOnly"), tmpfs=inputs.get("tmpfs"),
            mounts=mounts or None, pid_mode=inputs.get("pidMode"),
            cap_add=caps.get("adds"), cap_drop=caps.get("drops"))
        return config, list(bindings)

    @staticmethod
    def _healthcheck(hc: dict | None):
        if not hc:
            return None
        unknown = sorted(set(hc) - {"tests", "interval", "timeout", "startPeriod", "retries", "startInterval"})
        if unknown:
            raise EngineError(f"healthcheck inputs {unknown} are not translated")
        args = {"test": hc["tests"], "retries": int(hc.get("retries", 0))}
        for key, arg in (("interval", "interval"), ("timeout", "timeout"), ("startPeriod", "start_period")):
            if hc.get(key):
                args[arg] = duration_ns(hc[key])
        return Healthcheck(**args)

    @staticmethod
    def _upload(container: str, upload: dict) -> bytes:
        unknown = sorted(set(upload) - {"file", "content", "contentBase64", "source", "executable", "permissions"})
        if unknown:
            raise EngineError(f"container {container}: upload inputs {unknown} are not translated")
        if "content" in upload:
            data = upload["content"].encode()
        elif "contentBase64" in upload:
            data = base64.b64decode(upload["contentBase64"])
        else:
            data = Path(upload["source"]).read_bytes()
        if upload.get("permissions"):
            mode = int(upload["permissions"], 8)
        else:
            mode = 0o744 if upload.get("executable") else 0o644
        return _tar_one(upload["file"], data, mode)

    # -- waiting -----------------------------------------------------------------------------
    def wait_healthy(self, name: str, timeout: float) -> float:
        """Seconds until ``name`` reports healthy; EngineError (with its last log lines) otherwise."""
        started = time.monotonic()
        container = self.client.containers.get(name)
        while True:
            container.reload()
            state = container.attrs["State"]
            health = (state.get("Health") or {}).get("Status")
            if health == "healthy" or (health is None and state["Status"] == "running"):
                return time.monotonic() - started  # no healthcheck: running is all it can say
            if state["Status"] in ("exited", "dead") and state.get("Restarting") is False \
                    and container.attrs["HostConfig"]["RestartPolicy"].get("Name") in ("", "no"):
                break
            if time.monotonic() - started > timeout:
                break
            time.sleep(0.5)
        logs = container.logs(tail=30).decode(errors="replace")
        raise EngineError(f"container {name} is not healthy after {time.monotonic() - started:.0f}s "
                          f"(state {state['Status']}, health {health}); last log lines:\n{logs}")
