"""What the chart checks share: rendering with Helm's own library, the rendered objects,
and the environment a cluster would give the worker (tests/helm/check_chart.py runs them).
"""

import argparse
import os
import re
import subprocess
from pathlib import Path

import helm_python
import yaml

ARGS = argparse.Namespace()
# Read by the worker, but by the log filter and the OpenTelemetry SDK rather than a flag
# (listed in `run --help`'s epilogue).
EXTRA_WORKER_VARIABLES = {"RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                          "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"}


def values_files():
    return sorted((Path(ARGS.chart) / "ci").glob("*.yaml"))


def load_values(path):
    return yaml.safe_load(path.read_text()) or {}


def merge(base, override):
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def render(values):
    chart = helm_python.Chart.load(ARGS.chart)
    manifests = chart.render(values, name="release", namespace="payments", is_install=True)
    objects = []
    for path, text in manifests.items():
        if not path.endswith(".yaml"):
            continue  # NOTES.txt
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def one(objects, kind):
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def worker_variables():
    """The environment variables the worker reads, from its own --help."""
    help_text = subprocess.run(
        [ARGS.worker, "run", "--help"], check=True, capture_output=True, text=True
    ).stdout
    names = set(re.findall(r"\[env: ([A-Z0-9_]+)", help_text))
    assert "AMQP_URL" in names and "BUNQ_BASE_URL" in names, help_text
    return names | EXTRA_WORKER_VARIABLES


def seconds(duration):
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"SHUTDOWN_TIMEOUT {duration!r} is not whole seconds"
    return int(match.group(1))


def test_certificate():
    """A self-signed certificate and its key (PEM files), made once."""
    cert, key = Path(ARGS.tmp) / "tls-cert.pem", Path(ARGS.tmp) / "tls-key.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
             "-days", "1", "-subj", "/CN=chart-test"],
            check=True, capture_output=True,
        )
    return str(cert), str(key)


def check_env(rendered):
    """The environment a cluster would give the worker for this render: the ConfigMap,
    Secrets and mounted files."""
    env = {"PATH": "/usr/bin:/bin"}
    env.update({k: str(v) for k, v in rendered.config.items()})
    # Secrets and mounted files as a cluster would provide them.
    env["AMQP_URL"] = "amqp://user:password@rabbitmq:5672/%2f"
    if "REDIS_CLUSTER_URLS" not in env:
        env.setdefault("REDIS_URL", "redis://redis:6379/0")
    env["BUNQ_CLIENT_PRIVATE_KEY_FILE"] = ARGS.client_key
    if "SESSION_ENCRYPTION_KEY_FILE" in env:
        key = Path(ARGS.tmp) / "session_encryption.key"
        key.write_bytes(os.urandom(32))
        env["SESSION_ENCRYPTION_KEY_FILE"] = str(key)
    if "SESSION_ENCRYPTION_OLD_KEY_FILES" in env:
        olds = []
        for path in env["SESSION_ENCRYPTION_OLD_KEY_FILES"].split(","):
            old = Path(ARGS.tmp) / Path(path).name
            old.write_bytes(os.urandom(32))
            olds.append(str(old))
        env["SESSION_ENCRYPTION_OLD_KEY_FILES"] = ",".join(olds)
    if "BUNQ_PARTNER_API_KEY_FILE" in env:
        key = Path(ARGS.tmp) / "partner_api_key"
        key.write_text(os.urandom(16).hex() + "\n")  # one line, as the Secret holds it
        env["BUNQ_PARTNER_API_KEY_FILE"] = str(key)
    # TLS files as the Secrets would project them, and TLS URLs to go with them.
    for service, scheme in (("AMQP", "amqps"), ("REDIS", "rediss")):
        if f"{service}_TLS_CA_FILE" in env or f"{service}_TLS_CERT_FILE" in env:
            cert, key = test_certificate()
            for suffix, path in (("CA", cert), ("CERT", cert), ("KEY", key)):
                if f"{service}_TLS_{suffix}_FILE" in env:
                    env[f"{service}_TLS_{suffix}_FILE"] = path
            for url in (f"{service}_URL", f"{service}_CLUSTER_URLS"):
                if url in env:
                    env[url] = env[url].replace(scheme[:-1] + "://", scheme + "://")
    env["POD_NAME"] = "release-bunq-session-worker-0"
    return env


def worker_check(env):
    return subprocess.run([ARGS.worker, "check"], env=env, capture_output=True, text=True, timeout=60)


class Rendered:
    """One values file's render: the objects and the container the worker runs in."""

    def __init__(self, path, values=None):
        self.path = path
        self.values = load_values(path) if values is None else values
        self.objects = render(self.values)
        self.deployment = one(self.objects, "Deployment")
        self.service = one(self.objects, "Service")["metadata"]["name"]
        (config,) = [o for o in self.objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == self.service]
        self.config = config["data"]
        self.pod = self.deployment["spec"]["template"]["spec"]
        (self.container,) = self.pod["containers"]

    @classmethod
    def of(cls, values):
        return cls(Path("inline.yaml"), values)

    def own_variables(self):
        """Variable names the chart itself sets, not the user's extraConfig / extraEnv."""
        extra = set(self.values.get("extraConfig", {})) | {
            e["name"] for e in self.values.get("extraEnv", [])
        }
        names = set(self.config) | {e["name"] for e in self.container.get("env", [])}
        return names - extra

    def key_files(self):
        """The key volume's files: `{path: (Secret, key)}`, its mount and its mode."""
        (mount,) = [m for m in self.container["volumeMounts"] if m["name"] == "keys"]
        (volume,) = [v for v in self.pod["volumes"] if v["name"] == "keys"]
        files = {}
        for source in volume["projected"]["sources"]:
            for item in source["secret"]["items"]:
                assert "mode" not in item, f"{item['path']} has a mode of its own"
                files[item["path"]] = (source["secret"]["name"], item["key"])
        return files, mount, volume["projected"]["defaultMode"]

    def ops_port(self):
        (port,) = [p for p in self.container["ports"] if p["name"] == "ops"]
        return port["containerPort"]
