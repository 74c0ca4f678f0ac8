"""Secret redaction for bug-report bundles: text, JSON values, files and database copies.

Public API:
    ``redact_text(text, patterns) -> (text, count)``: every match replaced by ``[REDACTED]``
    (only the group named ``secret`` when a pattern has one).
    ``redact_string(value, patterns)``: like ``redact_text``, but a string holding a JSON object
    or array stays valid JSON. ``redact_json(value, patterns)``: a decoded JSON value with its
    strings redacted, and string values under a secret-looking key (or random-looking ones
    under any key) replaced whole.
    ``redact_file_bytes(data, suffix, patterns) -> (bytes, count)``: a file's content, line by
    line for ``.jsonl``, as a JSON document for ``.json``, as text otherwise.
    ``redact_database(src, dest, patterns) -> {"table.column": count}``: redact every non-key
    text column of a COPY of a database and ``VACUUM INTO`` a fresh, checked file.
    ``compile_patterns(regexes)`` (the ``--redact REGEX`` options); ``REDACTED``,
    ``DEFAULT_PATTERNS`` (name -> compiled regex), ``SECRET_KEY_NAME``.
    ``looks_random(value)``: the shape test for values of variables of any name (used by the
    ``random_assignment`` pattern and for JSON values); ``VALUE_CHECKS`` (pattern -> test its
    ``secret`` group must pass); ``MIN_RANDOM_LENGTH``, ``ENTROPY_BITS_PER_CHAR``.

Stability Guarantees:
    Matches become ``[REDACTED]``; JSON that held one is written out again (still valid JSON,
    one document per line in a ``.jsonl`` file), and text or a file with nothing to redact
    comes back unchanged. ``redact_database`` rewrites ``src`` in place, so it must be given a
    copy (``orch bundle`` passes a fresh backup); ``dest`` keeps the original schema, triggers
    included, and is checked (``integrity_check``, single file) before it is returned. Key
    columns are never redacted. Patterns are only added. An invalid extra regex is a
    ``UsageError`` (``bad_redact_pattern``, exit 2). Redacting redacted text changes nothing
    (count 0). Hex strings (commit ids, sha256 digests) and UUIDs are never redacted by their
    shape, only under a secret-looking name. The redacted database copy is created 0600.
    The patterns are our own table, modelled on detect-secrets' plugins and gitleaks' rules;
    docs/operations/BACKUP.md says why no secret-scanning library is used.

Integration Points:
    ``kernel.maintain.bundle`` redacts every bundle member with these helpers (``orch bundle``,
    whose
    ``--redact`` options and ``[bundle] redact`` setting go through ``compile_patterns``).

Dependencies:
    apsw; ``kernel.base.errors``, ``kernel.base.files``, ``kernel.maintain.backup``,
    ``kernel.store.db``.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import apsw

from kernel.base.errors import UsageError
from kernel.base.files import open_private
from kernel.maintain.backup import finish_single_file
from kernel.store import db

REDACTED = "[REDACTED]"

# Names of environment-like settings whose values are secrets: *TOKEN*, *SECRET*, *PASSWORD*,
# *API_KEY*, *ACCESS_KEY*, *PRIVATE_KEY*, *CREDENTIAL*, any upper-case *_KEY, AWS_*. A name
# that ends in _env, _var, _file, _path or _name says where a secret is (``api_key_env =
# "OPENAI_API_KEY"``), not what it is, and its value is kept.
_NAME = (r"(?:[A-Za-z0-9_.-]{0,64}?(?i:token(?!s|iz)|secret|passw(?:or)?d|api[_-]?key"
         r"|access[_-]?key|private[_-]?key|credentials?)[A-Za-z0-9_.-]{0,64}"
         r"|[A-Z0-9_]{0,64}_KEY|AWS_[A-Z0-9_]{1,64})"
         r"(?i:(?<![_.-]env)(?<![_.-]var)(?<![_.-]file)(?<![_.-]path)(?<![_.-]name))")
SECRET_KEY_NAME = re.compile(_NAME)

# ------------------------------------------------------------------ secrets by their shape
# A value assigned to a variable of any name is a secret when it looks random: at least
# MIN_RANDOM_LENGTH characters of a token alphabet, upper- and lower-case letters and digits
# mixed, not made of words, and a Shannon entropy of at least ENTROPY_BITS_PER_CHAR bits per
# character (less for short values, which cannot reach it: 0.85 * log2(length)). Hex strings
# (commit ids, sha256 digests), UUIDs, paths and URLs are never random-looking by this rule.
MIN_RANDOM_LENGTH = 20
ENTROPY_BITS_PER_CHAR = 4.5
_TOKEN_CHARS = r"A-Za-z0-9+/=_.~-"
_TOKEN_SET = frozenset(string.ascii_letters + string.digits + "+/=_.~-")
_HEX = re.compile(r"[0-9a-fA-F]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_WORD = re.compile(r"[A-Z]?[a-z]{3,}|(?<![A-Za-z0-9])[A-Z]{2,}(?![A-Za-z0-9])")


def _entropy(value: str) -> float:
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def looks_random(value: str) -> bool:
    """Whether ``value`` looks like a generated credential rather than a word, an identifier,
    a path, a version, a timestamp, a commit id, a digest or a UUID (see the rule above)."""
    if len(value) < MIN_RANDOM_LENGTH or _HEX.fullmatch(value) or _UUID.fullmatch(value):
        return False
    if "//" in value or (value.startswith("/") and "/" in value[1:]):  # a URL or a path
        return False
    if not set(value) <= _TOKEN_SET or "=" in value.rstrip("="):  # "=" only as base64 padding
        return False
    if not (any(c.isdigit() for c in value) and any(c.islower() for c in value)
            and any(c.isupper() for c in value)):
        return False
    if 2 * sum(len(w) for w in _WORD.findall(value)) >= len(value):  # CamelCase, snake_words
        return False
    return _entropy(value) >= min(ENTROPY_BITS_PER_CHAR, 0.85 * math.log2(len(value)))


_QUOTED_OR_BARE = (r"(?P<q>[\"'])?(?!\[REDACTED\])"
                   r"(?P<secret>(?(q)[^\"'\n]+|[^\s\"']+))")
_MYSQL = (r"(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlcheck|mysqlpump|mysqlshow|mysqlsh"
          r"|mariadb(?:-dump|-admin|-import|-check)?)")

DEFAULT_PATTERNS: dict[str, re.Pattern[str]] = {
    "private_key_block": re.compile(
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
        r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)"),
    # The tail of a key block whose beginning was cut off (a truncated log).
    "private_key_tail": re.compile(
        r"\A[A-Za-z0-9+/=\s]*-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"),
    "env_assignment": re.compile(
        rf"(?<![A-Za-z0-9_.-]){_NAME}[\"']?[ \t]*[=:][ \t]*(?P<q>[\"'])?"
        r"(?!\[REDACTED\])(?P<secret>(?(q)[^\"'\n]+|[^\s\"'&;,)}\]]+))"),
    # --token X, --api-key=X, --db-password 'X': the keyword is a whole word of the flag, so
    # --max-tokens, --token-file and mysql's -pX (below) are not taken for it.
    "secret_flag": re.compile(
        r"(?<![A-Za-z0-9_-])--?(?:[A-Za-z0-9]+[-_])*"
        r"(?i:token|secret|passw(?:or)?d|api[-_]?key|access[-_]?key)(?:=|[ \t]+)"
        + _QUOTED_OR_BARE),
    # mysql -pSECRET, -p'SECRET' (a bare -p prompts for the password and is left alone).
    "mysql_password": re.compile(
        rf"(?<![\w.-]){_MYSQL}\b[^\n;|&]*?(?<=\s)-p(?=\S)" + _QUOTED_OR_BARE),
    "sshpass_password": re.compile(
        r"(?<![\w.-])sshpass\b[^\n;|&]*?(?<=\s)-p[ \t]*" + _QUOTED_OR_BARE),
    "authorization_header": re.compile(
        r"(?i:\bauthorization[\"']?[ \t]*[:=][ \t]*[\"']?(?:basic|bearer|token|digest)[ \t]+)"
        r"(?!\[REDACTED\])(?P<secret>[A-Za-z0-9._~+/=-]{6,})"),
    "bearer_token": re.compile(
        r"(?i:\bbearer[ \t]+)(?!\[REDACTED\])(?P<secret>[A-Za-z0-9._~+/=-]{16,})"),
    "anthropic_key": re.compile(r"(?<![A-Za-z0-9])sk-ant-[A-Za-z0-9_-]{8,}"),
    "openai_key": re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9][A-Za-z0-9_-]{14,}"),
    "stripe_key": re.compile(r"(?<![A-Za-z0-9])[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"),
    "github_token": re.compile(
        r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
    "gitlab_token": re.compile(r"(?<![A-Za-z0-9])glpat-[A-Za-z0-9_-]{20,}"),
    "huggingface_token": re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}"),
    "aws_access_key_id": re.compile(
        r"(?<![A-Z0-9])(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}(?![A-Z0-9])"),
    "google_api_key": re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{35}"),
    "google_oauth_token": re.compile(r"(?<![A-Za-z0-9])ya29\.[0-9A-Za-z_-]{20,}"),
    "slack_token": re.compile(r"(?<![A-Za-z0-9])(?:xox[abeprs]|xapp)-[A-Za-z0-9-]{10,}"),
    "slack_webhook": re.compile(
        r"https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+-]+"),
    "discord_webhook": re.compile(
        r"https?://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/[0-9]+/[A-Za-z0-9_-]+"),
    "npm_token": re.compile(r"(?<![A-Za-z0-9])npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])"),
    "pypi_token": re.compile(r"(?<![A-Za-z0-9])pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}"),
    "sendgrid_key": re.compile(r"(?<![A-Za-z0-9])SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"),
    "telegram_bot_token": re.compile(r"(?<![0-9])[0-9]{8,10}:AA[0-9A-Za-z_-]{33}"),
    "digitalocean_token": re.compile(r"(?<![A-Za-z0-9])do[opr]_v1_[a-f0-9]{64}"),
    "shopify_token": re.compile(r"(?<![A-Za-z0-9])shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"),
    "azure_storage_key": re.compile(r"(?i:AccountKey)=(?P<secret>[A-Za-z0-9+/]{86}==)"),
    "jwt": re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]+){0,2}"),
    "url_password": re.compile(r"(?<=://)[^/\s:@]{1,128}:(?!\[REDACTED\])(?P<secret>[^/\s@]{1,256})@"),
    # NAME=value, NAME: value, "NAME": "value", export NAME='value' with any NAME: the value is
    # redacted when ``looks_random`` says so (VALUE_CHECKS).
    "random_assignment": re.compile(
        rf"(?<![\w.])[A-Za-z_][A-Za-z0-9_.-]{{0,63}}[\"']?[ \t]*[=:][ \t]*[\"']?"
        rf"(?P<secret>[{_TOKEN_CHARS}]{{{MIN_RANDOM_LENGTH},}})(?![{_TOKEN_CHARS}])"),
}

# Patterns whose match is a secret only when its ``secret`` group passes a check.
VALUE_CHECKS: dict[re.Pattern[str], Callable[[str], bool]] = {
    DEFAULT_PATTERNS["random_assignment"]: looks_random,
}

# Words that every match of a pattern contains (in lower case): a text holding none of them is
# not searched with that pattern (as gitleaks' rule keywords do). A regex whose first item is a
# lookbehind is searched at every position; most texts hold none of these words.
_KEYWORDS_BY_NAME: dict[str, tuple[str, ...]] = {
    "private_key_block": ("private key",),
    "private_key_tail": ("private key",),
    "env_assignment": ("token", "secret", "passw", "key", "credential", "aws_"),
    "secret_flag": ("token", "secret", "passw", "key"),
    "mysql_password": ("mysql", "mariadb"),
    "sshpass_password": ("sshpass",),
    "authorization_header": ("authorization",),
    "bearer_token": ("bearer",),
    "anthropic_key": ("sk-ant-",),
    "openai_key": ("sk-",),
    "stripe_key": ("k_live_", "k_test_"),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "gitlab_token": ("glpat-",),
    "huggingface_token": ("hf_",),
    "aws_access_key_id": ("akia", "asia", "aida", "aroa"),
    "google_api_key": ("aiza",),
    "google_oauth_token": ("ya29.",),
    "slack_token": ("xox", "xapp-"),
    "slack_webhook": ("hooks.slack.com",),
    "discord_webhook": ("/api/webhooks/",),
    "npm_token": ("npm_",),
    "pypi_token": ("pypi-",),
    "sendgrid_key": ("sg.",),
    "telegram_bot_token": (":aa",),
    "digitalocean_token": ("_v1_",),
    "shopify_token": ("shpat_", "shpca_", "shppa_", "shpss_"),
    "azure_storage_key": ("accountkey=",),
    "jwt": ("eyj",),
    "url_password": ("://",),
}
_KEYWORDS = {DEFAULT_PATTERNS[name]: words for name, words in _KEYWORDS_BY_NAME.items()}
_ANY_KEYWORD = re.compile("|".join(sorted(
    {re.escape(w) for words in _KEYWORDS_BY_NAME.values() for w in words})))


_Plan = tuple[tuple[re.Pattern[str], ...], tuple[tuple[re.Pattern[str], tuple[str, ...]], ...],
              bool]
_PLANS: dict[tuple[int, ...], _Plan] = {}


def _plan(patterns: Mapping[str, re.Pattern[str]]) -> _Plan:
    """For a set of patterns: those without keywords, all with their keywords (in order), and
    whether any has a value check (then JSON values are shape-checked too). Cached by the
    patterns' identities (hashing a compiled pattern hashes its whole program); the cached plan
    holds the patterns, so an identity is not reused while its plan is cached."""
    values = tuple(patterns.values())
    key = tuple(map(id, values))
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 64:
            _PLANS.clear()
        plan = _PLANS[key] = (tuple(p for p in values if p not in _KEYWORDS),
                              tuple((p, _KEYWORDS.get(p, ())) for p in values),
                              any(p in VALUE_CHECKS for p in values))
    return plan


def compile_patterns(regexes: Sequence[str]) -> dict[str, re.Pattern[str]]:
    """Extra patterns (``--redact REGEX``): the whole match is redacted, or only the group
    named ``secret`` when the regex has one."""
    compiled: dict[str, re.Pattern[str]] = {}
    for i, regex in enumerate(regexes, 1):
        try:
            compiled[f"extra_{i}"] = re.compile(regex)
        except re.error as exc:
            raise UsageError("bad_redact_pattern", f"--redact {regex!r} is not a valid regular "
                             f"expression: {exc}",
                             hint="use Python `re` syntax; quote it for the shell") from exc
    return compiled


def _redact_matches(pattern: re.Pattern[str], text: str) -> tuple[str, int]:
    """``text`` with the matches of ``pattern`` redacted: the whole match, or only its group
    named ``secret``, and only when that passes the pattern's ``VALUE_CHECKS`` entry."""
    check = VALUE_CHECKS.get(pattern)
    count = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal count
        whole = match.group(0)
        if "secret" in match.re.groupindex and match.group("secret") is not None:
            if check is not None and not check(match.group("secret")):
                return whole
            start, end = match.span("secret")
            count += 1
            return whole[: start - match.start()] + REDACTED + whole[end - match.start():]
        count += 1
        return REDACTED

    return pattern.sub(substitute, text), count


def redact_text(text: str, patterns: Mapping[str, re.Pattern[str]]) -> tuple[str, int]:
    """``text`` with every match replaced by ``[REDACTED]``, and the number of replacements."""
    ungated, every, _checks = _plan(patterns)
    total = 0
    lowered = text.lower()  # "[REDACTED]" adds no keyword, so one lowering serves all patterns
    if _ANY_KEYWORD.search(lowered) is None:  # most texts: only the patterns without keywords
        for pattern in ungated:
            text, n = _redact_matches(pattern, text)
            total += n
        return text, total
    for pattern, words in every:
        if words and not any(w in lowered for w in words):
            continue
        text, n = _redact_matches(pattern, text)
        total += n
    return text, total


def redact_json(value: Any, patterns: Mapping[str, re.Pattern[str]]) -> tuple[Any, int]:
    """A decoded JSON value with its strings redacted; string values under a secret-looking key
    (``OPENAI_API_KEY``, ``password``, ...), and random-looking string values under any key
    (``looks_random``, when ``patterns`` hold ``random_assignment``), are replaced whole."""
    if isinstance(value, str):
        return redact_string(value, patterns)
    if isinstance(value, list):
        items = [redact_json(v, patterns) for v in value]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(value, dict):
        # A random-looking value under any key is a secret when the caller redacts them in text.
        shapes = _plan(patterns)[2]
        out: dict[str, Any] = {}
        total = 0
        for key, item in value.items():
            new_key, n = redact_text(key, patterns) if isinstance(key, str) else (key, 0)
            total += n
            if isinstance(item, str) and item and item != REDACTED and (
                    SECRET_KEY_NAME.fullmatch(str(key))
                    or (shapes and looks_random(item))):
                out[new_key] = REDACTED
                total += 1
            else:
                out[new_key], n = redact_json(item, patterns)
                total += n
        return out, total
    return value, 0


def redact_string(value: str, patterns: Mapping[str, re.Pattern[str]]) -> tuple[str, int]:
    """Like ``redact_text``, but a string holding a JSON object or array stays valid JSON."""
    if value.lstrip()[:1] in ("{", "["):
        try:
            parsed = json.loads(value)
        except ValueError:
            pass
        else:
            new, n = redact_json(parsed, patterns)
            return (json.dumps(new, ensure_ascii=False) if n else value), n
    return redact_text(value, patterns)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _redact_table(conn: apsw.Connection, table: str,
                  patterns: Mapping[str, re.Pattern[str]]) -> dict[str, int]:
    info = db.rows(conn, f"PRAGMA table_xinfo({_ident(table)})")
    # Key columns are left alone: they identify rows (and foreign keys point at them). Every
    # other column is read, whatever its declared type: a column without STRICT typing can
    # hold text under any type, and only the values that are text are redacted.
    columns = [str(c["name"]) for c in info if not c["pk"] and not c["hidden"]]
    if not columns:
        return {}
    try:
        conn.execute(f"SELECT rowid FROM {_ident(table)} LIMIT 0").fetchall()
        keys = ["rowid"]
    except apsw.SQLError:  # WITHOUT ROWID: its primary key
        keys = [str(c["name"]) for c in sorted(info, key=lambda c: int(c["pk"])) if c["pk"]]
    select = ", ".join(_ident(k) if k != "rowid" else "rowid" for k in keys)
    select += ", " + ", ".join(_ident(c) for c in columns)
    counts: dict[str, int] = {}
    updates: list[tuple[dict[str, Any], list[Any]]] = []
    for found in conn.execute(f"SELECT {select} FROM {_ident(table)}"):
        key_values = list(found[: len(keys)])
        changed: dict[str, Any] = {}
        for column, value in zip(columns, found[len(keys):], strict=True):
            if isinstance(value, str):
                new, n = redact_string(value, patterns)
                if n:
                    changed[column] = new
                    counts[f"{table}.{column}"] = counts.get(f"{table}.{column}", 0) + n
        if changed:
            updates.append((changed, key_values))
    where = " AND ".join(f"{k if k == 'rowid' else _ident(k)} = ?" for k in keys)
    for changed, key_values in updates:
        sets = ", ".join(f"{_ident(c)} = ?" for c in changed)
        conn.execute(f"UPDATE {_ident(table)} SET {sets} WHERE {where}",
                     [*changed.values(), *key_values])
    return counts


def redact_database(src: Path, dest: Path,
                    patterns: Mapping[str, re.Pattern[str]]) -> dict[str, int]:
    """Redact every text column of every table of the COPY ``src`` (not key columns), then
    ``VACUUM INTO dest`` so no redacted text survives in free pages. The triggers (among them
    the event log's append-only guards) are dropped for the redaction and re-created after it,
    in the same transaction, so ``dest`` has the original schema. Returns counts per column."""
    with db.open_file(src, readonly=False) as conn:
        conn.pragma("foreign_keys", False)
        conn.pragma("ignore_check_constraints", True)
        conn.pragma("secure_delete", True)
        triggers = [(str(name), str(sql)) for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND sql IS NOT NULL "
            "ORDER BY rowid")]
        tables = [str(r[0]) for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name")]
        counts: dict[str, int] = {}
        with db.write_tx(conn):
            for name, _sql in triggers:
                conn.execute(f"DROP TRIGGER {_ident(name)}")
            for table in tables:
                counts.update(_redact_table(conn, table, patterns))
            for _name, sql in triggers:
                conn.execute(sql)
        # An empty file is a valid VACUUM INTO target: created 0600 first, it keeps that mode.
        open_private(dest, "wb").close()
        conn.execute("VACUUM INTO ?", (str(dest),))
    finish_single_file(dest)
    return counts


def redact_file_bytes(data: bytes, suffix: str,
                      patterns: Mapping[str, re.Pattern[str]]) -> tuple[bytes, int]:
    """A file's content redacted: ``.json`` as one JSON document, ``.jsonl`` line by line
    (a changed line is written back as one sorted JSON document), anything else as text;
    undecodable bytes survive unchanged. Returns ``data`` itself when nothing matched."""
    text = data.decode("utf-8", errors="surrogateescape")
    total = 0
    if suffix == ".json":
        new, total = redact_string(text, patterns)
    elif suffix == ".jsonl":
        lines = []
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            new_body, n = redact_string(body, patterns)
            if n and body.lstrip()[:1] == "{" and new_body != body:
                try:  # keep one compact, sorted document per line
                    new_body = json.dumps(json.loads(new_body), ensure_ascii=False,
                                          sort_keys=True)
                except ValueError:
                    pass
            total += n
            lines.append(new_body + line[len(body):])
        new = "".join(lines)
    else:
        new, total = redact_text(text, patterns)
    if not total:
        return data, 0
    return new.encode("utf-8", errors="surrogateescape"), total

