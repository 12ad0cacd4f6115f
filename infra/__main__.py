"""Prediction platform on Docker: one stack per environment (Pulumi.<stack>.yaml holds the differences)."""
import pulumi

import config
from cache import Cache
from database import Database
from gateway import Gateway
from monitoring import Monitoring
from network import Networks
from ops import Operations
from service import PredictionService

cfg = config.load()
networks = Networks("network", cfg)
database = Database("database", cfg, networks)
cache = Cache("cache", cfg, networks)
service = PredictionService("service", cfg, networks, database, cache)
gateway = Gateway("gateway", cfg, networks, service)
monitoring = Monitoring("monitoring", cfg, networks, service)
ops = Operations("ops", cfg, networks, service)

pulumi.export("url", gateway.url)
pulumi.export("replica_names", service.replica_names)
pulumi.export("prometheus_url", monitoring.prometheus_url)
pulumi.export("grafana_url", monitoring.grafana_url)
pulumi.export("ops_container", ops.container_name)
pulumi.export("api_key", service.api_key)
pulumi.export("grafana_admin_password", monitoring.grafana_admin_password)
# For the ops playbooks (PREDICTION_DB_PASSWORD); a secret output, shown only with --show-secrets.
pulumi.export("db_password", database.password)
