"""Run the real Pulumi program for one real stack file under mocks, the way the CLI runs it.

Usage: python stack_runner.py <stack> <out.json> [<overrides.json>]

<overrides.json> is {"secrets": {key: value}, "config": {key: value}}: secrets are set as
`pulumi config set --secret` would, config values as plain `pulumi config set` would (objects as JSON).

Like `pulumi up`: the working directory is infra/, infra/ is first on sys.path, __main__.py is
executed as __main__, the config comes from Pulumi.<stack>.yaml (plus the optional secrets, which
are marked secret the way `pulumi config set --secret` does), and preview is off so every output is
known. Each stack runs in its own interpreter because the program's modules and Pulumi's runtime
state are process-global. Every registered resource (type, logical name, URN, inputs as received by
the engine, secrets marked) and every stack export is written to <out.json>.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import runpy
import sys
from pathlib import Path

import pulumi
import yaml
from pulumi.runtime.mocks import MockMonitor

import provider_outputs
from pulumi_graph import reveal

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
PROJECT = "prediction-platform"
# Marker the engine protocol uses for secret values (pulumi/runtime/rpc.py).
SECRET_SIG = ("4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270")


def stack_config(stack: str, overrides: dict) -> tuple[dict[str, str], list[str]]:
    """Config map and secret keys as the CLI hands them to the program (objects as JSON strings)."""
    data = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text()) or {}
    config: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in (data.get("config") or {}).items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            # Encrypted values cannot be decrypted without the stack's secrets provider: use a stand-in.
            config[full] = f"fake-{key.split(':')[-1]}"
            secret_keys.append(full)
        elif isinstance(value, (dict, list)):
            config[full] = json.dumps(value)
        elif isinstance(value, bool):
            config[full] = "true" if value else "false"
        else:
            config[full] = str(value)
    for key, value in overrides.get("config", {}).items():
        config[f"{PROJECT}:{key}"] = value if isinstance(value, str) else json.dumps(value)
    for key, value in overrides.get("secrets", {}).items():
        config[f"{PROJECT}:{key}"] = value
        secret_keys.append(f"{PROJECT}:{key}")
    return config, secret_keys


def plain(value):
    """Engine-side value -> JSON; secrets become {"__secret__": value}."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG[0]) == SECRET_SIG[1]:
            return {"__secret__": plain(value.get("value"))}
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


class Recorder(pulumi.runtime.Mocks):
    """Records every resource and answers with its inputs plus the outputs its provider would
    return (provider_outputs.py: real passwords, keys and certificates)."""

    def __init__(self):
        self.resources: list[dict] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        inputs = plain(args.inputs)
        extra = provider_outputs.outputs_for(args.typ, args.name, reveal(inputs))
        self.resources.append({"type": args.typ, "name": args.name, "custom": bool(args.custom),
                               "inputs": inputs, "outputs": extra})
        return f"{args.name}-id", {**args.inputs, **extra}

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


class OptionsMonitor(MockMonitor):
    """The mock engine, also noting each resource's options the engine acts on (the mocks' own
    arguments do not carry them): how a replacement is ordered, and protection."""

    def __init__(self, mocks: Recorder):
        super().__init__(mocks)
        self.options: dict[str, dict] = {}

    def RegisterResource(self, request):
        self.options[request.name] = {"deleteBeforeReplace": bool(request.deleteBeforeReplace),
                                      "protect": bool(request.protect)}
        return super().RegisterResource(request)


class LogCollector(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[dict] = []
        self.setLevel(logging.INFO)

    def emit(self, record):
        self.records.append({"level": record.levelname, "message": record.getMessage()})


def main(stack: str, out: str, overrides: dict) -> None:
    os.chdir(INFRA)
    sys.path.insert(0, str(INFRA))
    config, secret_keys = stack_config(stack, overrides)
    pulumi.runtime.set_all_config(config, secret_keys)

    recorder = Recorder()
    monitor = OptionsMonitor(recorder)
    logs = LogCollector()
    logger = logging.getLogger("pulumi-mock-engine")
    logger.addHandler(logs)
    logger.setLevel(logging.DEBUG)
    pulumi.runtime.set_mocks(recorder, project=PROJECT, stack=stack, preview=False, logger=logger,
                             monitor=monitor)
    exports: dict[str, dict] = {}

    @pulumi.runtime.test
    def run():
        runpy.run_path(str(INFRA / "__main__.py"), run_name="__main__")
        stack_resource = pulumi.runtime.settings.get_root_resource()

        async def collect():
            for name, value in stack_resource.outputs.items():
                output = pulumi.Output.from_input(value)
                exports[name] = {"value": plain(await output.future()), "secret": await output.is_secret()}

        return pulumi.Output.from_input(asyncio.ensure_future(collect()))

    run()

    urns = list(monitor.resources)
    for r in recorder.resources:
        r["options"] = monitor.options.get(r["name"], {})
    Path(out).write_text(json.dumps({"stack": stack, "resources": recorder.resources, "urns": urns,
                                     "exports": exports, "logs": logs.records}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(Path(sys.argv[3]).read_text()) if len(sys.argv) > 3 else {})
