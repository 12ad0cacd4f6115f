"""Prediction platform on Docker (one engine, or a Swarm): one stack per environment (Pulumi.<stack>.yaml
holds the differences)."""
import pulumi

import config
from cache import Cache
from database import Database
from gateway import Gateway
from monitoring import Monitoring
from network import Networks
from ops import Operations
from runtime import runtime_for
from service import PredictionService

cfg = config.load()
runtime = runtime_for(cfg)  # containers on one engine, or services on a Swarm (orchestrator.kind)
networks = Networks("network", cfg, runtime)
database = Database("database", cfg, runtime, networks)
cache = Cache("cache", cfg, runtime, networks)
service = PredictionService("service", cfg, runtime, networks, database, cache)
gateway = Gateway("gateway", cfg, runtime, networks, service)
monitoring = Monitoring("monitoring", cfg, runtime, networks, service)
ops = Operations("ops", cfg, runtime, networks, service)

pulumi.export("url", gateway.url)
pulumi.export("replica_names", service.replica_names)
pulumi.export("prometheus_url", monitoring.prometheus_url)
pulumi.export("grafana_url", monitoring.grafana_url)
pulumi.export("ops_container", ops.container_name)
pulumi.export("api_key", service.api_key)
pulumi.export("grafana_admin_password", monitoring.grafana_admin_password)
# For the ops playbooks (PREDICTION_DB_PASSWORD); a secret output, shown only with --show-secrets.
pulumi.export("db_password", database.password)
