"""Subprocess entry: run the real Pulumi program (infra/) for one stack under Pulumi's mocks.

Usage: python -m stack_emulator._runner <spec.json>

The spec (written by program.py) names the stack, the mode ("preview" or "up"), config values and
secrets that override the stack file (as `pulumi config set [--secret]` would), and the outputs the
stack's state already holds. Like the CLI: the working directory is infra/, infra/ is first on
sys.path, __main__.py runs as __main__, config comes from Pulumi.<stack>.yaml.

What the mock engine answers for each registration is what the provider would return
(outputs.py): outputs already in the state when the inputs did not change (a generated password
stays the one the database was created with), real images for image resources in "up" mode (so the
program sees the image ids its containers will run), and, in "preview" mode, unknowns where a value
is only known after apply — exactly the values `pulumi preview` cannot know either.

Every registration is written to the spec's "out" file: URN, type, logical name, parent, the inputs
as the engine receives them (secrets marked {"__secret__": v}, unknowns {"__unknown__": true}), the
answered outputs, and every resource option the request carries.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import runpy
import sys
import threading
import traceback
from pathlib import Path

import pulumi
import yaml
from pulumi.output import Unknown
from pulumi.runtime.mocks import MockMonitor

from stack_emulator.values import id_marker

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
PROJECT = "prediction-platform"
# Marker the engine protocol uses for secret values (pulumi/runtime/rpc.py).
SECRET_SIG = ("4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270")


def stack_config(stack: str, config: dict, secrets: dict) -> tuple[dict[str, str], list[str]]:
    """Config map and secret keys as the CLI hands them to the program (objects as JSON strings)."""
    data = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text()) or {}
    values: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in (data.get("config") or {}).items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            # Encrypted values cannot be decrypted without the stack's secrets provider: a stand-in.
            values[full] = f"fake-{key.split(':')[-1]}"
            secret_keys.append(full)
        elif isinstance(value, (dict, list)):
            values[full] = json.dumps(value)
        elif isinstance(value, bool):
            values[full] = "true" if value else "false"
        else:
            values[full] = str(value)
    for key, value in config.items():
        full = f"{PROJECT}:{key}"
        if isinstance(value, dict) and full in values:
            # `pulumi config set --path key.field value`: the other fields of the object stay.
            value = _merge(json.loads(values[full]), value)
        values[full] = value if isinstance(value, str) else json.dumps(value)
    for key, value in secrets.items():
        values[f"{PROJECT}:{key}"] = value
        secret_keys.append(f"{PROJECT}:{key}")
    return values, secret_keys


def _merge(base: dict, change: dict) -> dict:
    out = dict(base)
    for k, v in change.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def plain(value):
    """Engine-side value -> JSON: secrets {"__secret__": v}, unknowns {"__unknown__": true}."""
    if isinstance(value, Unknown):
        return {"__unknown__": True}
    if isinstance(value, dict):
        if value.get(SECRET_SIG[0]) == SECRET_SIG[1]:
            return {"__secret__": plain(value.get("value"))}
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def request_options(request) -> dict:
    """Every resource option a RegisterResourceRequest carries, by the name Pulumi documents."""
    prop_deps = {k: list(v.urns) for k, v in request.propertyDependencies.items()}
    timeouts = request.customTimeouts
    return {
        "protect": request.protect if request.HasField("protect") else None,
        "dependsOn": list(request.dependencies),
        "propertyDependencies": prop_deps,
        # Unset (None) lets the provider decide; set true/false overrides it (step_generator.go).
        "deleteBeforeReplace": request.deleteBeforeReplace if request.deleteBeforeReplaceDefined else None,
        "ignoreChanges": list(request.ignoreChanges),
        "replaceOnChanges": list(request.replaceOnChanges),
        "aliases": [_alias(a) for a in request.aliases] + [{"urn": u} for u in request.aliasURNs],
        "retainOnDelete": request.retainOnDelete if request.HasField("retainOnDelete") else None,
        "deletedWith": request.deletedWith,
        "replaceWith": list(request.replace_with),
        "replacementTrigger": plain(_struct_value(request)) if request.HasField("replacement_trigger") else None,
        "customTimeouts": {k: getattr(timeouts, k) for k in ("create", "update", "delete") if getattr(timeouts, k)},
        "additionalSecretOutputs": list(request.additionalSecretOutputs),
        "importId": request.importId,
        "provider": request.provider,
        "version": request.version,
        "hooks": _hooks(request),
        "hideDiffs": list(request.hideDiffs),
    }


def _alias(alias) -> dict:
    from google.protobuf import json_format
    return json_format.MessageToDict(alias)


def _hooks(request) -> bool:
    """Whether any resource hook is bound (the SDK always sends the, possibly empty, binding)."""
    if not request.HasField("hooks"):
        return False
    from google.protobuf import json_format
    return any(json_format.MessageToDict(request.hooks).values())


def _struct_value(request):
    from google.protobuf import json_format
    return json_format.MessageToDict(request.replacement_trigger)


class Recorder(pulumi.runtime.Mocks):
    """Answers every registration as the provider would (outputs.py) and records it."""

    def __init__(self, mode: str, prior: dict, realiser):
        self.mode = mode
        self.prior = prior
        self.realiser = realiser
        self.lock = threading.Lock()
        self.records: dict[str, dict] = {}
        self.current: dict[int, str] = {}  # thread -> URN being registered
        self.image_error = ""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        from stack_emulator import outputs

        urn = self.current[threading.get_ident()]
        inputs = plain(args.inputs)
        prior = self.prior.get(urn)
        try:
            answered = outputs.answer(args.typ, urn, inputs, prior, self.mode, self.realiser)
        except Exception as exc:  # noqa: BLE001 — reported as what it is: the image could not be made
            if args.typ in (outputs.IMAGE, outputs.REMOTE_IMAGE):
                self.image_error = self.image_error or str(exc).replace("\n", " | ")
            raise
        with self.lock:
            self.records[urn] = {"urn": urn, "type": args.typ, "name": args.name, "custom": bool(args.custom),
                                 "inputs": inputs, "outputs": answered}
        resource_id = (prior or {}).get("id") if prior and answered is prior.get("outputs") else None
        # A resource this run creates (or replaces) has its id only once it exists: a marker that
        # apply.py resolves before its dependents are created (values.id_marker).
        return resource_id or id_marker(urn), outputs.to_engine(answered)

    def call(self, args: pulumi.runtime.MockCallArgs):
        raise NotImplementedError(f"the emulator does not answer invoke {args.token}")


class RecordingMonitor(MockMonitor):
    """The mock engine, also recording each request's options and parent (the mocks' arguments do
    not carry them) and the order of registrations."""

    def __init__(self, mocks: Recorder):
        super().__init__(mocks)
        self.order: list[str] = []
        self.meta: dict[str, dict] = {}

    def RegisterResource(self, request):
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type != "pulumi:pulumi:Stack":
            with self.mocks.lock:
                self.order.append(urn)
                self.meta[urn] = {"parent": request.parent, "options": request_options(request)}
            self.mocks.current[threading.get_ident()] = urn
        return super().RegisterResource(request)


class LogCollector(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[dict] = []
        self.setLevel(logging.INFO)

    def emit(self, record):
        self.records.append({"level": record.levelname, "message": record.getMessage()})


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    stack, mode = spec["stack"], spec["mode"]
    os.chdir(INFRA)
    sys.path.insert(0, str(INFRA))
    config, secret_keys = stack_config(stack, spec.get("config", {}), spec.get("secrets", {}))
    pulumi.runtime.set_all_config(config, secret_keys)

    realiser = None
    images = spec.get("realise_images", True)
    if images == "check":
        from stack_emulator import outputs
        outputs.PREPARE_CONTEXTS = False
    if mode == "up" and images == "stand-in":
        from stack_emulator.outputs import StandInImages
        realiser = StandInImages()
    elif mode == "up" and images and images != "check":
        from stack_emulator.outputs import ImageRealiser
        realiser = ImageRealiser()
    recorder = Recorder(mode, spec.get("prior", {}), realiser)
    monitor = RecordingMonitor(recorder)
    logs = LogCollector()
    logger = logging.getLogger("pulumi-mock-engine")
    logger.addHandler(logs)
    logger.setLevel(logging.DEBUG)
    pulumi.runtime.set_mocks(recorder, project=PROJECT, stack=stack, preview=(mode == "preview"), logger=logger,
                             monitor=monitor)
    exports: dict[str, dict] = {}

    @pulumi.runtime.test
    def run():
        runpy.run_path(str(INFRA / "__main__.py"), run_name="__main__")
        stack_resource = pulumi.runtime.settings.get_root_resource()

        async def collect():
            for name, value in stack_resource.outputs.items():
                output = pulumi.Output.from_input(value)
                known = await output.is_known()
                exports[name] = {"value": plain(await output.future()) if known else {"__unknown__": True},
                                 "secret": await output.is_secret()}

        return pulumi.Output.from_input(asyncio.ensure_future(collect()))

    try:
        run()
    except Exception:  # noqa: BLE001 — the caller reports the program's own error text
        traceback.print_exc()
        if recorder.image_error:
            from stack_emulator.program import IMAGE_FAILURE
            print(f"image error: {recorder.image_error}", file=sys.stderr)
            sys.exit(IMAGE_FAILURE)
        sys.exit(1)

    resources = []
    for urn in monitor.order:
        record = recorder.records.get(urn)
        if record is None:
            continue  # the stack resource, or a registration the mock refused
        resources.append({**record, **monitor.meta[urn]})
    Path(spec["out"]).write_text(json.dumps({"stack": stack, "mode": mode, "resources": resources,
                                             "exports": exports, "logs": logs.records}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
