"""Redaction: every kind of planted secret is gone from every byte of a real bundle, in every
place it can be (task logs, worker logs, orch.toml, task commands and prompts, every text column
of the database copy), while the near-misses that make a bundle useful stay."""

from __future__ import annotations

import gzip
import json
import re
import tarfile
from pathlib import Path

import apsw
import pytest

from kernel.maintain.redact import (
    DEFAULT_PATTERNS,
    REDACTED,
    looks_random,
    redact_string,
    redact_text,
)
from kernel.store import db

from .conftest import logical_dump, orch_json
from .e2e import make_project, py, run, task

# kind: (the text as it shows up, the parts of it that must be gone)
PEM = ("-----BEGIN RSA PRIVATE KEY-----\n"
       "MIIEowIBAAKCAQEAbundleTestPemLineOne0123\n"
       "QnVuZGxlVGVzdFBlbUxpbmVUd28wMTIzNDU2Nzg5\n"
       "-----END RSA PRIVATE KEY-----")
SECRETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mysql -pSECRET": ("mysql -h db.internal -uroot -pMyPw4Bundle9 shop", ("MyPw4Bundle9",)),
    "mysqldump --password=SECRET": ("mysqldump --password=DumpPw4Bundle9 shop",
                                    ("DumpPw4Bundle9",)),
    "mysql -p'SECRET'": ("mysql -uroot -p'Quoted Pw 4 Bundle' shop", ("Quoted Pw 4 Bundle",)),
    "Slack webhook URL": (
        "NOTIFY_URL=https://hooks.slack.com/services/T0BUNDLE1/B0BUNDLE2/Sl4ckHookBundleSecret9",
        ("T0BUNDLE1/B0BUNDLE2", "Sl4ckHookBundleSecret9")),
    "postgres URL": ("DATABASE_URL=postgres://shop:PgPass4Bundle9@db.internal:5432/shop",
                     ("PgPass4Bundle9",)),
    "GitHub token": ("CI_PUSH=ghp_Gh1tHubBundleT0ken0123456789abcdEFGH",
                     ("Gh1tHubBundleT0ken0123456789abcdEFGH",)),
    "AWS access key id": ("UPLOAD_ID=AKIABUNDLE7TEST2KEY9", ("AKIABUNDLE7TEST2KEY9",)),
    "AWS secret access key": ("UPLOAD_SIG=wJalrXUtnFEMI/K7MDENG/bPxRfiCYBundleKey9",
                              ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYBundleKey9",)),
    "JWT": ("SESSION=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJidW5kbGUtdGVzdCJ9.QnVuZGxlU2lnbmF0dXJl0123",
            ("eyJzdWIiOiJidW5kbGUtdGVzdCJ9", "QnVuZGxlU2lnbmF0dXJl0123")),
    "PEM private key block": (PEM, ("bundleTestPemLineOne0123",
                                    "QnVuZGxlVGVzdFBlbUxpbmVUd28wMTIzNDU2Nzg5")),
    "OpenAI key": ("LLM=sk-proj-Op3nAIBundleTestKey0123456789xyz",
                   ("Op3nAIBundleTestKey0123456789xyz",)),
    "Anthropic key": ("CLAUDE=sk-ant-api03-Anthr0picBundleTestKey0123456789",
                      ("Anthr0picBundleTestKey0123456789",)),
    "high-entropy value": ("BUILD_SIG=Zx8q2Lk9vW3mN7pR4tY6uA1sD5fG0hJb",
                           ("Zx8q2Lk9vW3mN7pR4tY6uA1sD5fG0hJb",)),
}
ASSIGNMENTS = {kind: line for kind, (line, _) in SECRETS.items()
               if "=" in line.split()[0] and "\n" not in line}
GONE = [part for _line, parts in SECRETS.values() for part in parts]

# What must survive: ordinary words, ids, digests and flags that only look a little like secrets.
# 40-hex (and 64-hex) strings are never redacted by their shape: they are commit ids and digests
# everywhere in orch's state. Under a secret-looking name (GITHUB_TOKEN=<40 hex>) they are.
TASK_UUID = "123e4567-e89b-42d3-a456-426614174000"
NEAR_MISSES = [
    "all 12 tests passed; the quick brown fox jumps over the lazy dog",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b",
    "HEAD is now at 3f78685 orch: merge workstream ws",
    "sha256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d08c15d0b0a08",
    f"run_id={TASK_UUID}",
    "max_tokens=4096 tokens_used=1234",
    "mysql -u root -p shop",
    "mkdir -p build/out && pytest -p no:cacheprovider",
    "aider --max-tokens 100 --token-file /run/secrets/agent-token",
    'api_key_env = "OPENAI_API_KEY"',
    "formatter=Terminal256Formatter",
    "platform=Linux-6.1.0-28-amd64-x86_64-with-glibc2.36",
    "PYTHONPATH=/home/dev/project/src/kernel/redact_database_module",
    "tests/test_cli.py::test_words_are_separated_by_whitespace PASSED",
    "see https://github.com/example/orch/pull/42 and https://hooks.slack.com/",
    "started_at=2026-01-01T12:00:00.412Z",
    "DATABASE_URL=postgres://shop@db.internal:5432/shop",
]
CUSTOM = "CUSTOM-4242"  # only [bundle] redact in orch.toml knows this one
PLANT = "\n".join([*(line for line, _ in SECRETS.values()), *NEAR_MISSES, f"ticket {CUSTOM}"])

# One sample per default pattern: adding a pattern means adding its sample here.
SAMPLES = {
    "private_key_block": PEM,
    "private_key_tail": "QnVuZGxlVGVzdA==\n-----END OPENSSH PRIVATE KEY-----\nrest",
    "env_assignment": "export OPENAI_API_KEY=plainvalue",
    "secret_flag": "deploy --db-password 'two words' --yes",
    "mysql_password": "/usr/bin/mysql -uroot -pMyPw4Bundle9 shop",
    "sshpass_password": "sshpass -p SshPw4Bundle9 ssh host",
    "authorization_header": "Authorization: Basic dXNlcjpwYXNzd29yZA==",
    "bearer_token": "curl -H 'x: Bearer Zx81vQm4Tr62nWp93Ks7'",
    "anthropic_key": "key sk-ant-api03-Anthr0picBundleTestKey0123456789",
    "openai_key": "key sk-proj-Op3nAIBundleTestKey0123456789xyz",
    "stripe_key": "key sk_live_0123456789abcdefABCDEF",
    "github_token": "push with github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
    "gitlab_token": "token glpat-0123456789abcdefABCD",
    "huggingface_token": "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
    "aws_access_key_id": "id AKIABUNDLE7TEST2KEY9 used",
    "google_api_key": "AIzaSyA-0123456789abcdefghijklmnopqrstu",
    "google_oauth_token": "ya29.a0AfH6SMBundleTestToken0123456789",
    "slack_token": "xoxb-2048-4096-AbCdEfGhIjKlMn",
    "slack_webhook": "https://hooks.slack.com/services/T0BUNDLE1/B0BUNDLE2/Sl4ckHookBundleSecret9",
    "discord_webhook": "https://discord.com/api/webhooks/123456789012345678/Disc0rdBundleHook-9",
    "npm_token": "//registry/:_authToken=npm_0123456789abcdefghijABCDEFGHIJ012345",
    "pypi_token": "pypi-AgEIcHlwaS5vcmc" + "A" * 60,
    "sendgrid_key": "SG." + "a" * 22 + "." + "B" * 43,
    "telegram_bot_token": "bot 123456789:AA" + "c" * 33,
    "digitalocean_token": "dop_v1_" + "ab12" * 16,
    "shopify_token": "shpat_" + "0f" * 16,
    "azure_storage_key": "AccountName=x;AccountKey=" + "A1b2" * 21 + "Ab==;",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJidW5kbGUtdGVzdCJ9.QnVuZGxlU2lnbmF0dXJl0123",
    "url_password": "https://deploy:UrlPw4Bundle9@git.example.com/repo.git",
    "random_assignment": "BUILD_SIG=Zx8q2Lk9vW3mN7pR4tY6uA1sD5fG0hJb",
}


def _contexts(line: str) -> list[str]:
    """``line`` as text, in a JSON log line, and, for NAME=value, as an env mapping, a TOML or
    YAML setting and an `export`."""
    out = [line, json.dumps({"stdout": line + "\n"})]
    if "=" in line.split()[0] and "\n" not in line:
        name, value = line.split("=", 1)
        out += [json.dumps({"env": {name: value}}), f'{name} = "{value}"', f"{name}: {value}",
                f"export {name}='{value}'"]
    return out


@pytest.mark.parametrize("kind", list(SECRETS))
def test_each_kind_of_secret_is_redacted_in_every_context(kind: str) -> None:
    line, parts = SECRETS[kind]
    for text in _contexts(line):
        redacted, count = redact_string(text, DEFAULT_PATTERNS)
        assert count >= 1 and REDACTED in redacted, (kind, text)
        for part in parts:
            assert part not in redacted, (kind, text, redacted)
        if text.startswith("{"):
            json.loads(redacted)  # JSON stays JSON
        assert redact_string(redacted, DEFAULT_PATTERNS) == (redacted, 0)  # idempotent


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_kept(text: str) -> None:
    assert redact_text(text, DEFAULT_PATTERNS) == (text, 0)
    doc = json.dumps({"log": text, "value": text.split("=", 1)[-1]})
    assert redact_string(doc, DEFAULT_PATTERNS) == (doc, 0)


def test_hex_is_kept_by_shape_and_redacted_by_name() -> None:
    sha = "3f786850e387550fdab836ed7e6dc881de23001b"
    assert not looks_random(sha) and not looks_random(sha.upper())
    assert not looks_random(TASK_UUID)
    assert redact_text(f"GITHUB_TOKEN={sha}", DEFAULT_PATTERNS)[0] == f"GITHUB_TOKEN={REDACTED}"
    assert redact_string(json.dumps({"commit": sha}), DEFAULT_PATTERNS)[1] == 0


def test_every_default_pattern_redacts_its_sample_on_its_own() -> None:
    assert set(SAMPLES) == set(DEFAULT_PATTERNS)
    for name, sample in SAMPLES.items():
        redacted, count = redact_text(sample, {name: DEFAULT_PATTERNS[name]})
        assert count >= 1 and REDACTED in redacted, name
        redacted_all, _ = redact_text(sample, DEFAULT_PATTERNS)
        assert REDACTED in redacted_all, name


def _plant_in_every_text_column(path: Path, text: str) -> tuple[set[str], set[str]]:
    """Append ``text`` to every non-key text column of every table (a JSON object or array gets
    it as one more member). Triggers and foreign keys are out of the way while this runs, as in
    `orch bundle`'s own redaction; CHECK constraints are not (a database that breaks them fails
    `integrity_check`, and a backup refuses it). Returns the "table.column"s planted, and those
    of tables with rows whose CHECK constraints refuse free text (states, timestamps, ...)."""
    conn = apsw.Connection(str(path))
    planted: set[str] = set()
    refused: set[str] = set()
    try:
        conn.pragma("foreign_keys", False)
        triggers = conn.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' "
                                "AND sql IS NOT NULL").fetchall()
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        with db.write_tx(conn):
            for name, _sql in triggers:
                conn.execute(f'DROP TRIGGER "{name}"')
            for table in tables:
                info = db.rows(conn, f'PRAGMA table_xinfo("{table}")')
                columns = [c["name"] for c in info if not c["pk"] and not c["hidden"]
                           and str(c["type"]).upper() in ("TEXT", "ANY", "")]
                for column in columns:  # a random tail per row keeps UNIQUE columns unique
                    t = ":t || char(10) || hex(randomblob(6))"
                    try:
                        with conn:  # a savepoint: a refused column changes nothing
                            changed = conn.execute(
                                f'UPDATE "{table}" SET "{column}" = CASE '
                                f"WHEN json_valid({column}) AND json_type({column}) = 'object' "
                                f"THEN json_set({column}, '$.planted', {t}) "
                                f"WHEN json_valid({column}) AND json_type({column}) = 'array' "
                                f"THEN json_insert({column}, '$[#]', {t}) "
                                f"WHEN {column} IS NULL THEN json_object('planted', {t}) "
                                f"ELSE {column} || char(10) || {t} END "
                                "RETURNING 1", {"t": text}).fetchall()
                    except apsw.ConstraintError:
                        refused.add(f"{table}.{column}")
                    else:
                        if changed:
                            planted.add(f"{table}.{column}")
            for _name, sql in triggers:
                conn.execute(sql)
    finally:
        conn.close()
    return planted, refused


def _extract(archive: Path, into: Path) -> dict[str, bytes]:
    """Unpack the bundle into ``into`` (its files as a user would get them) and return them."""
    files: dict[str, bytes] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            assert member.isfile() and not member.name.startswith(("/", "..")), member.name
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            target = into / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            files[member.name.split("/", 1)[1]] = data
    return files


@pytest.mark.slow
def test_a_bundle_holds_no_planted_secret_anywhere_and_keeps_the_near_misses(
        tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(PLANT + "\n")
    env_assignments = " ".join(ASSIGNMENTS.values())
    mysql_lines = " ".join(SECRETS[k][0] for k in SECRETS if k.startswith("mysql"))
    toml = ("\n" + "".join(f"# {line}\n" for line in PLANT.splitlines())
            + "\n[rules]\n"
            + f'no_security_issues = "env {env_assignments} true"\n'
            + "\n[bundle]\nredact = ['CUSTOM-[0-9]{4}']\n")
    root = make_project(tmp_path / "proj", [
        # A task log with every secret, printed the way tools print them.
        task("leaky", command=py("import sys; print(open(sys.argv[1]).read()); "
                                 "print(open(sys.argv[1]).read(), file=sys.stderr)",
                                 str(corpus))),
        # A definition with the secrets in its command (env assignments, a mysql command line)
        # and in its prompt; the task id is a UUID, which must survive everywhere.
        task(TASK_UUID, command=f"env {env_assignments} {py('pass')} {mysql_lines}",
             description=PLANT),
    ], toml_extra=toml)
    assert run(root, workers=2).returncode == 0
    state = root / ".state"
    with (state / "logs" / "worker-1.log").open("a") as log:  # as a worker's stderr would
        log.write(PLANT + "\n")
    planted, refused = _plant_in_every_text_column(state / "kernel.db", PLANT)
    assert {"task.command", "task.definition", "task.description", "task.last_error",
            "task.transition_metadata", "attempt.error_message", "attempt.output",
            "event.metadata", "event.task_id", "kernel_info.value", "workstream.definition",
            "worker.hostname", "metric_sample.document"} <= planted
    conn = apsw.Connection(str(state / "kernel.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        schema = dict(conn.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'table'"))
    finally:
        conn.close()
    for column in refused:  # only a CHECK constraint keeps free text out of a column
        table, name = column.split(".")
        assert re.search(rf"CHECK[^;]*\b{name}\b", schema[table]), column

    # Every secret really is in each source the bundle reads.
    sources = {"task log": (state / "logs" / "leaky.log").read_text(),
               "worker log": (state / "logs" / "worker-1.log").read_text(),
               "orch.toml": (root / "orch.toml").read_text(),
               "database": logical_dump(state / "kernel.db")}
    for where, text in sources.items():
        for part in GONE:
            assert part in text, (where, part)

    dest = tmp_path / "out" / "bug.tar.gz"
    code, report = orch_json("--root", str(root), "bundle", str(dest))
    assert code == 0, report
    assert report["errors"] == []
    files = _extract(dest, tmp_path / "unpacked")
    assert {"kernel.db", "orch.toml", "logs/leaky.log", "logs/worker-1.log",
            f"logs/{TASK_UUID}.log", "state/current.json", "state/transitions.jsonl"} <= set(files)

    # Not one byte of any secret in any file (the SQLite copy included), nor in the stream.
    stream = gzip.decompress(dest.read_bytes())
    for part in [*GONE, CUSTOM]:
        needle = part.encode()
        assert needle not in stream, part
        for name, data in files.items():
            assert needle not in data, (part, name)

    # Every planted column was redacted in the copy, and what must survive did.
    (top,) = (tmp_path / "unpacked").iterdir()  # one directory, orch-bundle-<timestamp>/
    conn = apsw.Connection(str(top / "kernel.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        for column in sorted(planted):
            table, name = column.split(".")
            values = [str(v) for (v,) in conn.execute(f'SELECT "{name}" FROM "{table}"')]
            assert any(REDACTED in v for v in values), column
        description = db.scalar(conn, "SELECT description FROM task WHERE task_id = ?",
                                (TASK_UUID,))
        assert db.scalar(conn, "SELECT COUNT(*) FROM event WHERE task_id LIKE ? || '%'",
                         (TASK_UUID,)) > 0
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    manifest = json.loads(files["manifest.json"])
    assert planted <= set(manifest["database"]["redactions"]), \
        planted - set(manifest["database"]["redactions"])
    for text in NEAR_MISSES:
        for name in ("logs/leaky.log", "logs/worker-1.log", "orch.toml"):
            assert text.encode() in files[name], (text, name)
        assert text in description, text
    assert TASK_UUID.encode() in files["state/current.json"]
    assert TASK_UUID.encode() in files["state/transitions.jsonl"]
