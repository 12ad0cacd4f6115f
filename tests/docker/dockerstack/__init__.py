"""Run a Pulumi stack of this repository on a real Docker engine without the Pulumi CLI (tests, trials)."""
