"""The Helm chart, checked offline against the worker it deploys.

Lints and renders the chart with each values file in its `ci/` directory and checks that
what Kubernetes would run is what the worker needs: every variable the chart sets is one
the worker reads, the rendered configuration passes the worker's own validation
(`bunq-session-worker check`), the grace period outlasts the drain, the probes reach the
ops port, the key file is where the configuration says, secrets never sit in the
ConfigMap, and missing required values stop the render with a message naming them.

Run through tests/helm/run.sh, which provides the venv and the worker binary.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import helm_python
import kubernetes_validate
import yaml

from chart_support import (ARGS, Rendered, check_env, merge, one, render, seconds, values_files, worker_check,
                           worker_variables)
from check_reset import CredentialReset  # noqa: F401 (run by unittest.main)

# Values the schema refuses, each with the variable and value the worker refuses alike.
SCHEMA_REFUSES = [
    ({"amqp": {"prefetch": 0}}, "PREFETCH", "0"),
    ({"amqp": {"prefetch": 1001}}, "PREFETCH", "1001"),
    ({"redis": {"replicaTimeoutMs": 1501}}, "REDIS_REPLICA_TIMEOUT", "1501ms"),
    ({"redis": {"replicaTimeoutMs": 0}}, "REDIS_REPLICA_TIMEOUT", "0ms"),
    ({"bunq": {"rateLimitScope": "egress"}}, "RATE_LIMIT_SCOPE", "egress"),
    ({"rateLimit": {"sessionServer": "0/30s"}}, "RATE_LIMIT_SESSION_SERVER", "0/30s"),
    ({"rateLimit": {"otherPost": "5 per 3s"}}, "RATE_LIMIT_OTHER_POST", "5 per 3s"),
    ({"retry": {"maxAttempts": 0}}, "MAX_ATTEMPTS", "0"),
    ({"lock": {"ttlMs": 999}}, "LOCK_TTL", "999ms"),
    ({"amqp": {"deadLetterMaxAge": "2w"}}, "DEAD_LETTER_MAX_AGE", "2w"),
    ({"logging": {"format": "text"}}, "LOG_FORMAT", "text"),
    ({"tracing": {"endpoint": "http://c:4318", "protocol": "http/json"}}, "OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ({"tracing": {"endpoint": "http://c:4318", "sampler": "sometimes"}}, "OTEL_TRACES_SAMPLER", "sometimes"),
    ({"shutdown": {"timeoutSeconds": 0}}, "SHUTDOWN_TIMEOUT", "0s"),
]
HERE = Path(__file__).resolve().parent
ALERT_TESTS = HERE / "alerts.test.yaml"
RUNBOOK = HERE.parent.parent / "docs" / "runbook.md"
REQUIRED = {
    "bunq.baseUrl": {"bunq": {"baseUrl": ""}},
    "bunq.clientKey.existingSecret": {"bunq": {"clientKey": {"existingSecret": ""}}},
    "amqp.existingSecret": {"amqp": {"existingSecret": ""}},
    # Renewal keeps credentials in Redis: only sealed.
    "sessionEncryption.existingSecret": {"sessionRenewal": {"enabled": True}},
}


class Chart(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.renders = [Rendered(path) for path in values_files()]
        assert len(cls.renders) >= 2, "expected default and full values files in ci/"
        # The first file is the minimal install; the failure cases start from it.
        cls.minimal = cls.renders[0].values

    def assert_every_selector(self, expr, *matchers, deployment=None):
        """Every `{…}` selector in a PromQL query carries each of `matchers`; a
        kube-state-metrics selector names this release's Deployment instead."""
        selectors = re.findall(r"(\w*)\{([^{}]*)\}", expr)
        self.assertTrue(selectors, expr)
        for name, selector in selectors:
            if name.startswith("kube_"):
                self.assertIn(f'deployment="{deployment}"', selector, expr)
                self.assertIn(matchers[0], selector, expr)
                continue
            for matcher in matchers:
                self.assertIn(matcher, selector, expr)

    def test_lint_is_clean_with_every_values_file(self):
        for rendered in self.renders:
            with self.subTest(values=rendered.path.name):
                report = helm_python.lint(ARGS.chart, rendered.values, strict=True)
                problems = [m for m in report.get("messages", []) if m["severity"] >= 2]
                self.assertEqual(problems, [], report)
                self.assertEqual(report.get("errors") or [], [], report)

    def test_every_variable_the_chart_sets_is_one_the_worker_reads(self):
        known = worker_variables()
        for rendered in self.renders:
            with self.subTest(values=rendered.path.name):
                unknown = rendered.own_variables() - known
                self.assertEqual(unknown, set(), "the worker would ignore these")
                for required in ("AMQP_URL", "BUNQ_BASE_URL", "BUNQ_CLIENT_PRIVATE_KEY_FILE"):
                    self.assertIn(required, rendered.own_variables())
                redis = {"REDIS_URL", "REDIS_CLUSTER_URLS"} & rendered.own_variables()
                self.assertEqual(len(redis), 1, f"exactly one of REDIS_URL and REDIS_CLUSTER_URLS: {redis}")

    def test_the_rendered_configuration_passes_the_workers_validation(self):
        for rendered in self.renders:
            with self.subTest(values=rendered.path.name):
                check = worker_check(check_env(rendered))
                first = check.stdout.splitlines()[0] if check.stdout else check.stderr
                self.assertEqual(first.split(), ["config", "ok"], check.stdout + check.stderr)

    def test_the_schema_refuses_what_the_worker_refuses(self):
        base = check_env(self.renders[0])
        for override, variable, value in SCHEMA_REFUSES:
            with self.subTest(values=override):
                with self.assertRaisesRegex(helm_python.HelmError, "schema"):
                    render(merge(self.minimal, override))
                check = worker_check(dict(base, **{variable: value}))
                self.assertNotEqual(check.returncode, 0, f"the worker accepts {variable}={value}")
                self.assertIn(variable, check.stdout + check.stderr)
        # The bounds themselves pass both.
        edge = {"amqp": {"prefetch": 1000}, "redis": {"replicaTimeoutMs": 1500}, "lock": {"ttlMs": 1000},
                "rateLimit": {"sessionServer": "2/1m"}, "retry": {"maxAttempts": 1}}
        check = worker_check(check_env(Rendered.of(merge(self.minimal, edge))))
        self.assertEqual(check.stdout.split()[:2], ["config", "ok"], check.stdout + check.stderr)

    def test_every_manifest_is_valid_for_kubernetes(self):
        custom = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"}
        seen = set()
        for rendered in self.renders:
            # The newest bundled schemas: helm-python-sdk renders for Helm's default (recent)
            # Kubernetes version, with the fields gated on it (the PDB's eviction policy).
            for version in (kubernetes_validate.latest_version(),):
                for obj in rendered.objects:
                    with self.subTest(values=rendered.path.name, kind=obj["kind"], version=version):
                        try:
                            kubernetes_validate.validate(obj, version, strict=True)
                            seen.add(obj["kind"])
                        except kubernetes_validate.SchemaNotFoundError:
                            # Custom resources: no bundled schema (their CRDs are not Kubernetes').
                            self.assertIn(obj["kind"], custom)
                        except kubernetes_validate.ValidationError as e:
                            self.fail(f"{obj['kind']} {obj['metadata']['name']}: {e.message} at {list(e.path)}")
        self.assertLessEqual({"Deployment", "ConfigMap", "Service", "NetworkPolicy", "PodDisruptionBudget"}, seen)

    def test_the_chart_version_follows_the_crate(self):
        chart = yaml.safe_load((Path(ARGS.chart) / "Chart.yaml").read_text())
        cargo = (Path(ARGS.chart) / ".." / ".." / "Cargo.toml").read_text()
        version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
        self.assertEqual(chart["version"], version, "Chart.yaml version follows Cargo.toml's workspace version")
        self.assertEqual(chart["appVersion"], version, "appVersion follows Cargo.toml's workspace version")

    def test_keda_has_its_own_host_and_tls(self):
        full = self.renders[-1]
        (auth,) = [o for o in full.objects if o["kind"] == "TriggerAuthentication"]
        params = {p["parameter"]: (p["name"], p["key"]) for p in auth["spec"]["secretTargetRef"]}
        self.assertEqual(params["host"], ("rabbitmq-keda", "amqp-url"))
        for parameter, key in (("ca", "ca.crt"), ("cert", "tls.crt"), ("key", "tls.key")):
            self.assertEqual(params[parameter], ("rabbitmq-client-tls", key), parameter)
        (scaled,) = [o for o in full.objects if o["kind"] == "ScaledObject"]
        self.assertEqual(scaled["spec"]["triggers"][0]["metadata"]["tls"], "enable")
        plain = render(merge(self.minimal, {"autoscaling": {"enabled": True}}))
        (auth,) = [o for o in plain if o["kind"] == "TriggerAuthentication"]
        self.assertEqual([p["parameter"] for p in auth["spec"]["secretTargetRef"]], ["host"])
        with self.assertRaisesRegex(helm_python.HelmError, "autoscaling.rabbitmq.tls.enabled needs"):
            render(merge(self.minimal, {"autoscaling": {"enabled": True, "rabbitmq": {"tls": {"enabled": True}}}}))


    def test_tls_files_come_from_secrets_and_are_configured_where_they_are_mounted(self):
        full = self.renders[-1]
        mounts = {m["name"]: m for m in full.container["volumeMounts"]}
        sources = full.pod["volumes"][[v["name"] for v in full.pod["volumes"]].index("keys")]["projected"]["sources"]
        projected = {item["path"]: s["secret"]["name"] for s in sources for item in s["secret"]["items"]}
        for variable, secret in (("AMQP_TLS_CA_FILE", "rabbitmq-client-tls"), ("AMQP_TLS_CERT_FILE", "rabbitmq-client-tls"),
                                 ("AMQP_TLS_KEY_FILE", "rabbitmq-client-tls"), ("REDIS_TLS_CA_FILE", "redis-tls")):
            path = Path(full.config[variable])
            self.assertEqual(str(path.parent), mounts["keys"]["mountPath"], variable)
            self.assertEqual(projected[path.name], secret, variable)
        self.assertNotIn("REDIS_TLS_CERT_FILE", full.config, "certKey empty: no client certificate")
        self.assertNotIn("AMQP_TLS_CA_FILE", self.renders[0].config, "no TLS files by default")

    def test_old_encryption_keys_come_from_their_secrets_where_the_configuration_points(self):
        with_old = [r for r in self.renders if r.values.get("sessionEncryption", {}).get("oldKeys")]
        self.assertTrue(with_old, "a ci/ values file must set sessionEncryption.oldKeys")
        for rendered in self.renders:
            with self.subTest(values=rendered.path.name):
                old_keys = rendered.values.get("sessionEncryption", {}).get("oldKeys", [])
                if not old_keys:
                    self.assertNotIn("SESSION_ENCRYPTION_OLD_KEY_FILES", rendered.config)
                    continue
                mounts = {m["name"]: m for m in rendered.container["volumeMounts"]}
                sources = rendered.pod["volumes"][[v["name"] for v in rendered.pod["volumes"]].index("keys")]
                projected = {
                    item["path"]: (s["secret"]["name"], item["key"])
                    for s in sources["projected"]["sources"]
                    for item in s["secret"]["items"]
                }
                paths = rendered.config["SESSION_ENCRYPTION_OLD_KEY_FILES"].split(",")
                self.assertEqual(len(paths), len(old_keys))
                for path, old in zip(paths, old_keys):
                    path = Path(path)
                    self.assertEqual(str(path.parent), mounts["keys"]["mountPath"])
                    expected = (old["existingSecret"], old.get("secretKey", "session_encryption.key"))
                    self.assertEqual(projected[path.name], expected, path)
                    self.assertNotEqual(path.name, Path(rendered.config["SESSION_ENCRYPTION_KEY_FILE"]).name)
        old_key = {"sessionEncryption": {"oldKeys": [{"existingSecret": "previous"}]}}
        with self.assertRaisesRegex(helm_python.HelmError, r"sessionEncryption.oldKeys needs sessionEncryption.existingSecret"):
            render(merge(self.minimal, old_key))
        nameless = {"sessionEncryption": {"existingSecret": "current", "oldKeys": [{"secretKey": "k"}]}}
        # The schema refuses it before the template's own message would.
        with self.assertRaisesRegex(helm_python.HelmError, "/sessionEncryption/oldKeys/0': missing property 'existingSecret'"):
            render(merge(self.minimal, nameless))

    def test_the_default_image_is_what_make_image_tags(self):
        chart = yaml.safe_load((Path(ARGS.chart) / "Chart.yaml").read_text())
        cargo = (Path(ARGS.chart) / ".." / ".." / "Cargo.toml").read_text()
        version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
        self.assertEqual(chart["appVersion"], version, "appVersion follows the workspace version")
        default = self.renders[0]
        self.assertEqual(default.container["image"], f"localhost/bunq-session-worker:{version}")
        security = default.container["securityContext"]
        self.assertTrue(security["readOnlyRootFilesystem"])
        self.assertEqual(default.pod["securityContext"]["runAsUser"], 65532, "the image's user")

    def test_the_grace_period_outlasts_the_drain(self):
        for rendered in self.renders:
            with self.subTest(values=rendered.path.name):
                drain = seconds(rendered.config["SHUTDOWN_TIMEOUT"])
                self.assertGreater(rendered.pod["terminationGracePeriodSeconds"], drain)

    def test_probes_and_ops_address_use_the_ops_port(self):
        for rendered in self.renders:
            with self.subTest(values=rendered.path.name):
                port = rendered.ops_port()
                self.assertTrue(rendered.config["OPS_ADDR"].endswith(f":{port}"))
                paths = {}
                for probe in ("livenessProbe", "readinessProbe"):
                    get = rendered.container[probe]["httpGet"]
                    self.assertIn(get["port"], ("ops", port))
                    paths[probe] = get["path"]
                self.assertEqual(paths, {"livenessProbe": "/healthz", "readinessProbe": "/readyz"})

    def test_the_key_file_is_mounted_where_the_configuration_points(self):
        for rendered in self.renders:
            with self.subTest(values=rendered.path.name):
                key_file = Path(rendered.config["BUNQ_CLIENT_PRIVATE_KEY_FILE"])
                mounts = {m["name"]: m for m in rendered.container["volumeMounts"]}
                volumes = {v["name"]: v for v in rendered.pod["volumes"]}
                (mount,) = [m for m in mounts.values() if key_file.parent == Path(m["mountPath"])]
                self.assertTrue(mount.get("readOnly"))
                sources = volumes[mount["name"]]["projected"]["sources"]
                paths = [item["path"] for s in sources for item in s["secret"]["items"]]
                self.assertIn(key_file.name, paths)

    def test_secrets_come_from_secrets_never_from_the_config_map(self):
        for rendered in self.renders:
            with self.subTest(values=rendered.path.name):
                self.assertNotIn("AMQP_URL", rendered.config)
                (amqp,) = [e for e in rendered.container["env"] if e["name"] == "AMQP_URL"]
                self.assertIn("secretKeyRef", amqp["valueFrom"])
                for value in rendered.config.values():
                    self.assertNotRegex(str(value), r"://[^/@]*:[^/@]*@", "credentials in a ConfigMap")
        with self.assertRaisesRegex(helm_python.HelmError, "redis.url looks like it carries credentials"):
            render(merge(self.minimal, {"redis": {"url": "redis://:hunter2@redis:6379/0"}}))
        with self.assertRaisesRegex(helm_python.HelmError, "redis.clusterUrls looks like it carries credentials"):
            render(merge(self.minimal, {"redis": {"url": "", "clusterUrls": "redis://:hunter2@r0:6379"}}))
        with self.assertRaisesRegex(helm_python.HelmError, "set only one of redis.url, redis.clusterUrls"):
            render(merge(self.minimal, {"redis": {"clusterUrls": "redis://r0:6379"}}))
        # A Secret with seed nodes feeds REDIS_CLUSTER_URLS.
        objects = render(merge(self.minimal, {"redis": {"url": "", "existingSecret": "seeds", "cluster": True}}))
        (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
        (seeds,) = [e for e in container["env"] if e["name"] == "REDIS_CLUSTER_URLS"]
        self.assertEqual(seeds["valueFrom"]["secretKeyRef"]["name"], "seeds")

    def test_missing_required_values_stop_the_render_naming_them(self):
        for name, blank in REQUIRED.items():
            with self.subTest(value=name):
                with self.assertRaisesRegex(helm_python.HelmError, re.escape(name)):
                    render(merge(self.minimal, blank))

    def test_alerts_select_this_release_and_keep_prometheus_templates(self):
        enabled = [r for r in self.renders if r.values.get("prometheusRule", {}).get("enabled")]
        self.assertTrue(enabled, "a ci/ values file must enable prometheusRule")
        for rendered in self.renders:
            rules = [o for o in rendered.objects if o["kind"] == "PrometheusRule"]
            self.assertEqual(len(rules), 1 if rendered in enabled else 0, rendered.path.name)
        for rendered in enabled:
            (rule,) = [o for o in rendered.objects if o["kind"] == "PrometheusRule"]
            (group,) = rule["spec"]["groups"]
            alerts = [r for r in group["rules"] if "alert" in r]
            self.assertGreaterEqual(len(alerts), 8)
            for alert in alerts:
                with self.subTest(alert=alert["alert"]):
                    self.assertIn(alert["labels"]["severity"], ("critical", "warning"))
                    self.assertTrue(alert["annotations"]["summary"] and alert["annotations"]["description"])
                    # Every selector is scoped to this release's series, never to all pods.
                    self.assert_every_selector(
                        alert["expr"], 'namespace="payments"', f'service="{rendered.service}"',
                        deployment=rendered.deployment["metadata"]["name"],
                    )
                    anchor = alert["alert"].lower()
                    self.assertTrue(alert["annotations"]["runbook_url"].endswith(f"docs/runbook.md#{anchor}"))
                    self.assertIn(f"\n## {alert['alert']}\n", RUNBOOK.read_text(), "a runbook section per alert")
            templated = " ".join(a["annotations"]["summary"] for a in alerts)
            self.assertIn("{{ $labels.reason }}", templated, "Prometheus templates must reach Prometheus")

    def test_the_alerts_pass_promtool_and_their_unit_tests(self):
        values = merge(self.minimal, {"prometheusRule": {"enabled": True}})
        (rule,) = [o for o in render(values) if o["kind"] == "PrometheusRule"]
        groups = rule["spec"]["groups"]
        tmp = Path(ARGS.tmp)
        (tmp / "rules-full.yaml").write_text(yaml.safe_dump({"groups": groups}))
        check = subprocess.run([ARGS.promtool, "check", "rules", str(tmp / "rules-full.yaml")],
                               capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        # promtool compares annotations verbatim: the tests hold expressions, `for` and labels.
        bare = [dict(g, rules=[{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]])
                for g in groups]
        (tmp / "rules.yaml").write_text(yaml.safe_dump({"groups": bare}))
        tests = yaml.safe_load(ALERT_TESTS.read_text())
        tests["rule_files"] = [str(tmp / "rules.yaml")]
        (tmp / "alerts.test.yaml").write_text(yaml.safe_dump(tests))
        run = subprocess.run([ARGS.promtool, "test", "rules", str(tmp / "alerts.test.yaml")],
                             capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        # Every alert has a case where it fires and one where it stays quiet.
        cases = [c for t in tests["tests"] for c in t["alert_rule_test"]]
        for alert in [r["alert"] for g in groups for r in g["rules"] if "alert" in r]:
            with self.subTest(alert=alert):
                mine = [c for c in cases if c["alertname"] == alert]
                self.assertTrue([c for c in mine if c["exp_alerts"]], "no case where it fires")
                self.assertTrue([c for c in mine if not c["exp_alerts"]], "no case where it stays quiet")

    def test_the_dashboard_ships_for_the_sidecar_and_filters_by_release(self):
        enabled = [r for r in self.renders if r.values.get("grafanaDashboard", {}).get("enabled")]
        self.assertTrue(enabled, "a ci/ values file must enable grafanaDashboard")
        for rendered in enabled:
            maps = [o for o in rendered.objects if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]]
            (dashboard_map,) = maps
            (text,) = dashboard_map["data"].values()
            dashboard = json.loads(text)
            variables = {v["name"] for v in dashboard["templating"]["list"]}
            self.assertLessEqual({"datasource", "namespace", "service"}, variables)
            targets = [t for p in dashboard["panels"] for t in p["targets"]]
            self.assertGreaterEqual(len(targets), 9)
            for target in targets:
                self.assert_every_selector(target["expr"], 'namespace="$namespace", service="$service"')

    def test_autoscaling_leaves_the_replica_count_to_keda(self):
        for rendered in self.renders:
            with self.subTest(values=rendered.path.name):
                scaled = [o for o in rendered.objects if o["kind"] == "ScaledObject"]
                if rendered.values.get("autoscaling", {}).get("enabled"):
                    self.assertNotIn("replicas", rendered.deployment["spec"])
                    self.assertEqual(len(scaled), 1)
                    queue = rendered.config["INPUT_QUEUE"]
                    (trigger,) = scaled[0]["spec"]["triggers"]
                    self.assertEqual(trigger["metadata"]["queueName"], queue)
                else:
                    self.assertIn("replicas", rendered.deployment["spec"])
                    self.assertEqual(scaled, [])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chart", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--client-key", required=True)
    parser.add_argument("--promtool", default="promtool")
    parsed, rest = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        vars(ARGS).update(vars(parsed), tmp=tmp)
        program = unittest.main(argv=[sys.argv[0], "-v", *rest], exit=False)
    sys.exit(0 if program.result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
