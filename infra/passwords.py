"""Secrets a stack file may set (``pulumi config set --secret``) or leave to be generated."""
from __future__ import annotations

import pulumi
import pulumi_random as random


def secret_or_generated(value: pulumi.Output[str] | None, resource_name: str, length: int,
                        opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
    """``value`` when the stack sets it, else a generated password of ``length`` characters, kept in
    the stack's state (stable across deploys). Alphanumeric: several end up inside URLs. Secret either way."""
    if value is not None:
        return pulumi.Output.secret(value)
    return pulumi.Output.secret(random.RandomPassword(resource_name, length=length, special=False, opts=opts).result)
