"""nginx gateway: TLS termination and load balancing over every service replica."""
from __future__ import annotations

import pulumi
import pulumi_docker as docker
import pulumi_tls as tls

import templates
from config import PlatformConfig
from network import Networks
from runtime import File, Health, Port, Workload
from service import PredictionService

# Inside the container nginx always listens on the standard ports; the stack decides what the host publishes.
# Docker's embedded DNS on user-defined networks: replicas are re-resolved through it (nginx >= 1.27.3).
DOCKER_DNS = "127.0.0.11"
HTTPS_PORT = 443
HTTP_PORT = 80
TLS_DIR = "/etc/nginx/tls"
# nginx's image stops with SIGQUIT: a graceful shutdown that lets in-flight requests finish.
SHUTDOWN_GRACE_SECONDS = 15


def nginx_variables(cfg: PlatformConfig, upstream_servers: list[str], grpc_upstream_servers: list[str]) -> dict:
    """Template variables of roles/nginx_gateway/templates/nginx.conf.j2 for the container."""
    g = cfg.gateway
    return {
        "nginx_user": "nginx",
        "nginx_pid_path": "/var/run/nginx.pid",
        "nginx_error_log": "stderr",
        "nginx_access_log": "/dev/stdout",
        "nginx_temp_dir": "/var/cache/nginx",
        "nginx_server_name": g.serverName,
        "nginx_https_port": HTTPS_PORT,
        "nginx_http_port": HTTP_PORT,
        "nginx_https_redirect_port": g.httpsPort,
        "nginx_ssl_certificate": f"{TLS_DIR}/server.crt",
        "nginx_ssl_certificate_key": f"{TLS_DIR}/server.key",
        "nginx_upstream_servers": upstream_servers,
        "nginx_grpc_upstream_servers": grpc_upstream_servers,
        "nginx_resolver": DOCKER_DNS,
        "nginx_upstream_keepalive": g.upstreamKeepalive,
        "nginx_next_upstream_tries": g.nextUpstreamTries,
        "nginx_client_max_body_size": g.clientMaxBodySize,
        "nginx_proxy_read_timeout": g.proxyReadTimeout,
    }


class Gateway(pulumi.ComponentResource):
    """nginx on the app network only, publishing ``gateway.httpsPort``/``httpPort`` on the host.

    The certificate comes from the ``tlsCert``/``tlsKey`` secrets when set, else a self-signed one is
    generated with pulumi-tls. Outputs: ``url`` (https), ``nginx_conf`` (the rendered configuration).
    """

    def __init__(self, name: str, cfg: PlatformConfig, runtime, networks: Networks, service: PredictionService,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("prediction:gateway:Gateway", name, None, opts)
        child_opts = pulumi.ResourceOptions(parent=self)
        g = cfg.gateway

        if cfg.secrets.tlsCert is not None and cfg.secrets.tlsKey is not None:
            cert_pem = cfg.secrets.tlsCert
            key_pem = pulumi.Output.secret(cfg.secrets.tlsKey)
        else:
            key = tls.PrivateKey(f"{name}-tls-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child_opts)
            cert = tls.SelfSignedCert(
                f"{name}-tls-cert",
                private_key_pem=key.private_key_pem,
                subject=tls.SelfSignedCertSubjectArgs(common_name=g.serverName, organization="prediction-platform"),
                dns_names=sorted({g.serverName, "localhost"}),
                validity_period_hours=g.selfSignedValidityHours,
                early_renewal_hours=24 * 30,
                allowed_uses=["key_encipherment", "digital_signature", "server_auth"],
                opts=child_opts,
            )
            cert_pem = cert.cert_pem
            # The provider marks private_key_pem secret itself; saying so here keeps it secret regardless.
            key_pem = pulumi.Output.secret(key.private_key_pem)

        # One name that Docker's DNS resolves to every replica (nginx re-resolves it each second):
        # replacing, adding or removing a replica changes neither this file nor the gateway container.
        self.nginx_conf = pulumi.Output.from_input(templates.render(
            templates.NGINX_CONF, **nginx_variables(cfg, [f"{service.service_alias}:{service.port}"],
                                                    [f"{service.service_alias}:{service.grpc_port}"])))

        image = docker.RemoteImage(f"{name}-image", name=f"{g.image}:{g.tag}", keep_locally=True, opts=child_opts)
        self.container = runtime.run(Workload(
            name=f"{name}-container",
            host=cfg.physical("gateway"),
            component="gateway",
            image=image.image_id,
            files=[File("/etc/nginx/nginx.conf", self.nginx_conf), File(f"{TLS_DIR}/server.crt", cert_pem),
                   File(f"{TLS_DIR}/server.key", key_pem, secret=True, mode=0o600)],
            ports=[Port(HTTPS_PORT, g.httpsPort, g.bindAddress), Port(HTTP_PORT, g.httpPort, g.bindAddress)],
            networks=[(networks.app, [])],
            health=Health(["CMD-SHELL", "kill -0 \"$(cat /var/run/nginx.pid)\""], interval="5s", timeout="3s",
                          retries=3, start_period="5s"),
            stop_grace_seconds=SHUTDOWN_GRACE_SECONDS,
            # The host ports are on the manager(s); a second nginx cannot take them while the first runs.
            constraints=["node.role == manager"],
            update_order="stop-first",
        ), pulumi.ResourceOptions(parent=self, delete_before_replace=True))
        port_suffix = "" if g.httpsPort == 443 else f":{g.httpsPort}"
        self.url = pulumi.Output.from_input(f"https://{g.serverName}{port_suffix}/")
        self.register_outputs({"url": self.url, "name": self.container.name})
