"""Token resets in the chart (`credentialReset`, issue #20): the values render the worker's
settings and mount the partner's API key as a file, read-only, from its Secret; the key
never reaches a ConfigMap or an env value; turning resets on without the Secrets they need
stops the render. Run by check_chart.py (tests/helm/run.sh).

The checks against the worker itself (it reads every variable, `check` accepts the render,
refuses what the schema refuses) run once the worker reads CREDENTIAL_RESET; before that
they are skipped, saying so.
"""

import copy
import unittest
from pathlib import Path

import helm_python

from chart_support import (Rendered, check_env, load_values, merge, one, render, values_files, worker_check,
                           worker_variables)

# The worker's settings for resets (CREDENTIAL_RESET=on needs them all, or their defaults).
RESET_VARIABLES = {"CREDENTIAL_RESET", "BUNQ_PARTNER_API_KEY_FILE", "CREDENTIAL_RESET_MAX_ATTEMPTS",
                   "CREDENTIAL_LIFETIME", "RATE_LIMIT_PUT", "RATE_LIMIT_GET"}
PARTNER_SECRET = "bunq-partner-key"
RESET = {
    "sessionEncryption": {"existingSecret": "session-key"},
    "credentialReset": {
        "enabled": True,
        "partnerApiKey": {"existingSecret": PARTNER_SECRET, "secretKey": "api-key"},
        "maxAttempts": 5,
        "credentialLifetime": "4h",
    },
    "rateLimit": {"put": "1/3s", "get": "2/3s"},
}
# Each with the variable and value the worker refuses alike.
SCHEMA_REFUSES = [
    ({"credentialReset": {"maxAttempts": 0}}, "CREDENTIAL_RESET_MAX_ATTEMPTS", "0"),
    ({"credentialReset": {"credentialLifetime": "4 hours"}}, "CREDENTIAL_LIFETIME", "4 hours"),
    ({"rateLimit": {"put": "0/3s"}}, "RATE_LIMIT_PUT", "0/3s"),
    ({"rateLimit": {"get": "3 per 3s"}}, "RATE_LIMIT_GET", "3 per 3s"),
]


def files_values(name):
    (path,) = [p for p in values_files() if p.name == name]
    return load_values(path)


def naming(value, needle, at=""):
    """Where in rendered objects a string holds `needle`, as `kind.path.to.field`."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from naming(inner, needle, f"{at or value.get('kind')}.{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from naming(inner, needle, f"{at}.{i}" if at else "")
    elif isinstance(value, str) and needle in value:
        yield at


class CredentialReset(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.minimal = files_values("default-values.yaml")
        cls.full = files_values("full-values.yaml")

    def worker_reads_resets(self):
        """Skips the test until the worker reads the reset settings, all of them."""
        known = worker_variables() & RESET_VARIABLES
        if not known:
            self.skipTest("the worker does not read CREDENTIAL_RESET yet (issue #20): re-run once it does")
        self.assertEqual(known, RESET_VARIABLES, "the worker reads only some of the reset settings")

    def test_the_values_render_the_settings_and_mount_the_partner_key(self):
        rendered = Rendered.of(merge(self.minimal, RESET))
        settings = {k: v for k, v in rendered.config.items() if k in RESET_VARIABLES - {"BUNQ_PARTNER_API_KEY_FILE"}}
        self.assertEqual(settings, {"CREDENTIAL_RESET": "on", "CREDENTIAL_RESET_MAX_ATTEMPTS": "5",
                                    "CREDENTIAL_LIFETIME": "4h", "RATE_LIMIT_PUT": "1/3s", "RATE_LIMIT_GET": "2/3s"})
        key_file = Path(rendered.config["BUNQ_PARTNER_API_KEY_FILE"])
        files, mount, mode = rendered.key_files()
        self.assertEqual(str(key_file.parent), mount["mountPath"])
        self.assertTrue(mount["readOnly"])
        self.assertEqual(mode, 0o440, "readable by the pod's group alone, like the other keys")
        self.assertEqual(files[key_file.name], (PARTNER_SECRET, "api-key"))
        self.assertNotIn(key_file.name, {Path(rendered.config[v]).name for v in
                                         ("BUNQ_CLIENT_PRIVATE_KEY_FILE", "SESSION_ENCRYPTION_KEY_FILE")})

    def test_without_overrides_the_workers_defaults_are_rendered(self):
        on = {"sessionEncryption": {"existingSecret": "session-key"},
              "credentialReset": {"enabled": True, "partnerApiKey": {"existingSecret": PARTNER_SECRET}}}
        rendered = Rendered.of(merge(self.minimal, on))
        # The worker's defaults, as issue #20 gives them.
        for variable, value in (("CREDENTIAL_RESET_MAX_ATTEMPTS", "3"), ("CREDENTIAL_LIFETIME", "1h"),
                                ("RATE_LIMIT_PUT", "2/3s"), ("RATE_LIMIT_GET", "3/3s")):
            self.assertEqual(rendered.config[variable], value, variable)
        files, _, _ = rendered.key_files()
        self.assertEqual(files[Path(rendered.config["BUNQ_PARTNER_API_KEY_FILE"]).name], (PARTNER_SECRET, "partner_api_key"))

    def test_the_partner_key_is_only_a_mounted_file(self):
        objects = copy.deepcopy(Rendered.of(merge(self.full, RESET)).objects)
        (volume,) = [v for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "keys"]
        sources = volume["projected"]["sources"]
        (partner,) = [s for s in sources if s["secret"]["name"] == PARTNER_SECRET]
        # Without its source in the key volume the Secret is named nowhere: no secretKeyRef,
        # no envFrom, nothing in a ConfigMap.
        sources.remove(partner)
        self.assertEqual(list(naming(objects, PARTNER_SECRET)), [], "the partner key's Secret outside its file")

    def test_resets_off_set_nothing_and_mount_no_partner_key(self):
        staged = merge(self.minimal, {"credentialReset": {"partnerApiKey": {"existingSecret": PARTNER_SECRET}}})
        renders = [Rendered(p) for p in values_files()] + [Rendered.of(staged)]
        for rendered in renders:
            with self.subTest(values=rendered.path.name):
                self.assertEqual(set(rendered.config) & RESET_VARIABLES, set(), "the worker's defaults: off")
                files, _, _ = rendered.key_files()
                self.assertNotIn(PARTNER_SECRET, {secret for secret, _ in files.values()})

    def test_resets_on_without_their_secrets_stop_the_render_naming_them(self):
        no_partner_key = merge(self.full, {"credentialReset": {"enabled": True}})
        with self.assertRaisesRegex(helm_python.HelmError, r"credentialReset.enabled .* set credentialReset.partnerApiKey.existingSecret"):
            render(no_partner_key)
        no_sealing_key = merge(self.minimal, {"credentialReset": RESET["credentialReset"]})
        with self.assertRaisesRegex(helm_python.HelmError, r"credentialReset.enabled .* set sessionEncryption.existingSecret"):
            render(no_sealing_key)

    def test_the_schema_refuses_what_the_worker_refuses(self):
        on = merge(self.full, RESET)
        for override, _, _ in SCHEMA_REFUSES:
            with self.subTest(values=override):
                with self.assertRaisesRegex(helm_python.HelmError, "schema"):
                    render(merge(on, override))
        with self.assertRaisesRegex(helm_python.HelmError, "schema"):
            render(merge(on, {"credentialReset": {"partnerApiKey": {"key": "api-key"}}}))
        self.worker_reads_resets()
        base = check_env(Rendered.of(on))
        for _, variable, value in SCHEMA_REFUSES:
            with self.subTest(variable=variable):
                check = worker_check(dict(base, **{variable: value}))
                self.assertNotEqual(check.returncode, 0, f"the worker accepts {variable}={value}")
                self.assertIn(variable, check.stdout + check.stderr)

    def test_the_worker_reads_and_accepts_the_reset_configuration(self):
        self.worker_reads_resets()
        for base in (self.minimal, self.full):
            rendered = Rendered.of(merge(base, RESET))
            with self.subTest(values="full" if base is self.full else "minimal"):
                self.assertEqual(rendered.own_variables() - worker_variables(), set(), "the worker would ignore these")
                check = worker_check(check_env(rendered))
                first = check.stdout.splitlines()[0] if check.stdout else check.stderr
                self.assertEqual(first.split(), ["config", "ok"], check.stdout + check.stderr)
