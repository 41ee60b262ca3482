"""The stack-file editor: a config change edits the lines of the values that change and nothing else.

Every test reads the result back with PyYAML (a YAML 1.1 reader, like the engine's) as well as through the editor,
so "the file looks right" is never taken for "the file means the right thing".
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automation.engine import PROJECT_DIR
from automation.stack_file import StackFile, StackFileError, same_value

SALT = "encryptionsalt: v1:IDfjpO6WjZs=:v1:Xv5PlHqvkQIwBme8:Drg8aekn9uYtXGAZIiWKbgz2d/AVCw=="
DIGEST = "2583c4e4c562781eef5347ff6b3a409bd9c46d1694da09724bde8da50a531b30"
STACK_FILE = f"""\
# A commented stack file, as reviewed in git.
config:
  # staging | prod
  mlrelease:environment: staging
  mlrelease:model:
    name: credit-default          # the model name clients call
    version: 'v1'                 # version label
    path: models/incumbent        # model directory
    sha256: {DIGEST}   # artifact digest

  mlrelease:gates:
    latency:                      # upper confidence bounds
      p99_ms: 100
      p50_ms: 50
    drift:
      psi_threshold: 0.25         # a feature drifts when PSI > threshold
      alpha: 0.01                 # after the correction below

  mlrelease:canary:
    steps: [5, 25, 50, 100]       # traffic percent on the candidate

  # The watcher's window.
  mlrelease:watch:
    window_seconds: 10            # every signal over the last 10 s
{SALT}
"""


def stack_file(tmp_path: Path, text: str = STACK_FILE) -> StackFile:
    path = tmp_path / "Pulumi.staging.yaml"
    path.write_bytes(text.encode())
    return StackFile(path)


def changes(before: str, after: str) -> tuple[list[str], list[str]]:
    """The lines taken out and the lines put in, as difflib sees them."""
    diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    return removed, added


def comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("#")]


def read_back(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)["config"]


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_a_release_changes_exactly_the_model_lines_of_the_documented_stack_files(tmp_path: Path, stack: str) -> None:
    original = (PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text()
    edited = stack_file(tmp_path, original)
    model = edited.config()["mlrelease:model"]
    release = {"version": "v7", "path": "/srv/models/credit-default/v7", "sha256": "0123456789" * 6 + "abcd"}
    edited.set("mlrelease:model", {**model, **release})
    removed, added = changes(original, edited.text)
    assert [line.split(":")[0].strip() for line in removed] == ["version", "path", "sha256"]
    assert [line.split(":")[0].strip() for line in added] == ["version", "path", "sha256"]
    assert comments(edited.text) == comments(original)
    assert read_back(edited.text)["mlrelease:model"] == {**model, **release}
    assert {k: v for k, v in read_back(edited.text).items() if k != "mlrelease:model"} == {
        k: v for k, v in read_back(original).items() if k != "mlrelease:model"
    }
    edited.set("mlrelease:model", model)
    assert edited.text == original


def test_values_that_did_not_change_leave_the_file_untouched(tmp_path: Path) -> None:
    edited = stack_file(tmp_path)
    path, stat = edited.path, edited.path.stat()
    for key, value in edited.config().items():
        edited.set(key, value)
    edited.set("mlrelease:model", {**edited.config()["mlrelease:model"], "sha256": DIGEST})
    edited.remove("mlrelease:not-there")
    assert edited.text == STACK_FILE and not edited.changed
    assert edited.save() is False
    assert path.read_bytes() == STACK_FILE.encode() and path.stat().st_mtime_ns == stat.st_mtime_ns


def test_a_nested_merge_assigns_only_the_leaves_that_change(tmp_path: Path) -> None:
    edited = stack_file(tmp_path)
    gates = edited.config()["mlrelease:gates"]
    edited.set(
        "mlrelease:gates",
        {
            "latency": {**gates["latency"], "p99_ms": 250, "max_ratio": 1.25},
            "drift": {"psi_threshold": 0.25},
        },
    )
    removed, added = changes(STACK_FILE, edited.text)
    assert removed == ["      p99_ms: 100", "      alpha: 0.01                 # after the correction below"]
    assert added == ["      p99_ms: 250", "      max_ratio: 1.25"]
    lines = edited.text.splitlines()
    assert lines[lines.index("      max_ratio: 1.25") - 1] == "      p50_ms: 50"  # the end of its own mapping
    assert read_back(edited.text)["mlrelease:gates"] == {
        "latency": {"p99_ms": 250, "p50_ms": 50, "max_ratio": 1.25},
        "drift": {"psi_threshold": 0.25},
    }


def test_a_new_mapping_is_native_yaml_and_removing_it_gives_back_the_same_bytes(tmp_path: Path) -> None:
    edited = stack_file(tmp_path)
    marker = {
        "version": "v1",
        "sha256": "1" * 64,  # digits only: an integer unless quoted
        "from_version": "yes",  # a boolean to a YAML 1.1 reader unless quoted
        "traffic_moved_at": None,
        "reason": "watch: error rate 0.31 # breached",
        "when": "2026-11-25",
    }
    edited.set("mlrelease:restore", marker)
    removed, added = changes(STACK_FILE, edited.text)
    assert removed == []
    assert added == [
        "  mlrelease:restore:",
        "    version: v1",
        f"    sha256: '{'1' * 64}'",
        "    from_version: 'yes'",
        "    traffic_moved_at: null",
        "    reason: 'watch: error rate 0.31 # breached'",
        "    when: '2026-11-25'",
    ]
    assert read_back(edited.text)["mlrelease:restore"] == marker
    assert edited.text.splitlines()[-1] == SALT
    edited.remove("mlrelease:restore")
    assert edited.text == STACK_FILE


def test_removing_a_key_takes_its_lines_and_keeps_its_neighbours_comments(tmp_path: Path) -> None:
    edited = stack_file(tmp_path)
    edited.remove("mlrelease:canary")
    removed, added = changes(STACK_FILE, edited.text)
    assert added == []
    steps = "    steps: [5, 25, 50, 100]       # traffic percent on the candidate"
    assert removed == ["  mlrelease:canary:", steps, ""]
    assert "  # The watcher's window." in edited.text.splitlines()
    assert "mlrelease:canary" not in read_back(edited.text)


def test_quotes_comment_columns_and_flow_lists_are_kept(tmp_path: Path) -> None:
    edited = stack_file(tmp_path)
    edited.set("mlrelease:model", {**edited.config()["mlrelease:model"], "version": "v10"})
    edited.set("mlrelease:canary", {"steps": [5, 50, 100]})
    _removed, added = changes(STACK_FILE, edited.text)
    assert added == [
        "    version: 'v10'                # version label",
        "    steps: [5, 50, 100]           # traffic percent on the candidate",
    ]


def test_json_strings_written_by_the_automation_api_become_native_mappings(tmp_path: Path) -> None:
    model = {"name": "credit-default", "version": "v1", "path": "models/incumbent", "sha256": DIGEST}
    engine_written = (
        f"{SALT}\nconfig:\n"
        f"  mlrelease:environment: staging\n"
        f"  mlrelease:model: '{yaml.safe_dump(model, default_flow_style=True).strip()}'\n"
        "  mlrelease:rollback: '{\"window_seconds\": 3600}'\n"
    )
    edited = stack_file(tmp_path, engine_written)
    edited.set("mlrelease:rollback", {"window_seconds": 3600})  # the same value: the JSON string stays
    assert edited.text == engine_written
    edited.set("mlrelease:model", {**model, "version": "v2"})
    assert "  mlrelease:model:\n    name: credit-default\n    version: v2\n" in edited.text
    assert read_back(edited.text)["mlrelease:model"] == {**model, "version": "v2"}
    assert read_back(edited.text)["mlrelease:rollback"] == '{"window_seconds": 3600}'


def test_secure_values_and_the_salt_are_never_rewritten(tmp_path: Path) -> None:
    text = STACK_FILE.replace(
        "  mlrelease:environment: staging\n",
        "  mlrelease:environment: staging\n  mlrelease:token:\n    secure: v1:abc:def==\n",
    )
    edited = stack_file(tmp_path, text)
    edited.set("mlrelease:model", {**edited.config()["mlrelease:model"], "version": "v2"})
    assert "  mlrelease:token:\n    secure: v1:abc:def==\n" in edited.text and SALT in edited.text
    fix = "`pulumi config set --secret --path 'mlrelease:token' VALUE`"
    with pytest.raises(StackFileError, match=rf"mlrelease:token is a secret .* {fix}"):
        edited.set("mlrelease:token", "plain text")


def test_a_file_without_config_gets_a_config_block(tmp_path: Path) -> None:
    edited = stack_file(tmp_path, f"{SALT}\n")  # what `pulumi stack init` writes with a passphrase
    edited.set("mlrelease:model", {"name": "m", "version": "v1"})
    assert edited.text == f"{SALT}\nconfig:\n  mlrelease:model:\n    name: m\n    version: v1\n"
    empty = stack_file(tmp_path, "config:\n# nothing yet\n")
    empty.set("mlrelease:environment", "staging")
    assert read_back(empty.text) == {"mlrelease:environment": "staging"} and "# nothing yet" in empty.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"Pulumi.staging.yaml does not exist: .* restore it from version control or write it"),
        ("config: [1, 2\n", r"is not valid YAML .* at line 2\): fix the file"),
        ("- config\n", r"is not a mapping: a stack file has `config:`"),
        ("config: staging\n", r"`config:` is not a mapping"),
    ],
)
def test_a_file_that_cannot_be_edited_is_one_line_naming_the_fix(tmp_path: Path, text: str | None, message) -> None:
    path = tmp_path / "Pulumi.staging.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(StackFileError, match=message) as excinfo:
        StackFile(path).set("mlrelease:environment", "staging")
    assert "\n" not in str(excinfo.value)
    assert path.exists() is (text is not None) and (text is None or path.read_text() == text)


def test_crlf_line_breaks_are_kept(tmp_path: Path) -> None:
    edited = stack_file(tmp_path, STACK_FILE.replace("\n", "\r\n"))
    edited.set("mlrelease:restore", {"version": "v1"})
    edited.set("mlrelease:model", {**edited.config()["mlrelease:model"], "version": "v2"})
    assert "\n" not in edited.text.replace("\r\n", "")
    edited.save()
    assert read_back(edited.path.read_text())["mlrelease:restore"] == {"version": "v1"}


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12),
    st.sampled_from(["yes", "off", "~", "12e45", "0x1f", "2026-01-01", "a: b", "#x", "- y", "'q'", '"', "1_000"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("abcxyz_", min_size=1, max_size=4), inner),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(["mlrelease:model", "mlrelease:gates", "mlrelease:new"]), value=values)
def test_any_value_reads_back_as_written_and_the_rest_is_unchanged(tmp_path: Path, section: str, value: Any) -> None:
    edited = stack_file(tmp_path)
    original = edited.config()
    edited.set(section, value)
    got = read_back(edited.text)
    assert same_value(got[section], value)
    others = {k: v for k, v in original.items() if k != section}
    assert same_value({k: v for k, v in got.items() if k != section}, others)
    assert same_value(edited.config()[section], value)  # the YAML 1.2 reader agrees
    if section in original:
        edited.set(section, original[section])
    else:
        edited.remove(section)
    assert same_value(read_back(edited.text), original)
    assert comments(edited.text)[0] == "# A commented stack file, as reviewed in git." and SALT in edited.text
