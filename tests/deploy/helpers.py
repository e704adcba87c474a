"""Offline readers for deployment files: Dockerfiles, and YAML through the tools at hand
(the venv has no YAML parser; kubectl and docker-compose can give JSON)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


class DeployFileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str  # upper case
    arguments: str  # the rest, continuation lines joined

    def exec_form(self) -> list[str]:
        """The JSON (exec) form's list; a shell-form instruction is an error."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":  # options, then CMD and the command
            text = text.split("CMD", 1)[1] if "CMD" in text else text
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DeployFileError(f"{self.keyword} is not in exec (JSON) form: {self.arguments}") from exc
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DeployFileError(f"{self.keyword}: expected a JSON list of strings")
        return value

    def words(self) -> list[str]:
        return shlex.split(self.arguments)


def read_dockerfile(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, backslash continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    if pending:
        raise DeployFileError(f"{path}: ends inside a continued line")
    return instructions


def last(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    if not found:
        raise DeployFileError(f"no {keyword} instruction")
    return found[-1]


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """Every build-context path a COPY or ADD reads (not --from=stage copies)."""
    sources: list[str] = []
    for instruction in instructions:
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        words = instruction.words()
        if any(w.startswith("--from") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources.extend(paths[:-1])
    return sources


# -- YAML to JSON ---------------------------------------------------------------------------


def _json_documents(text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    out: list[Any] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return out
        value, index = decoder.raw_decode(text, index)
        out.append(value)


def kubernetes_objects(manifests_yaml: str) -> list[dict[str, Any]]:
    """Rendered manifests (multi-document YAML) as JSON objects, offline: an empty local patch
    makes kubectl print each object as JSON without asking a cluster."""
    result = subprocess.run(
        ["kubectl", "patch", "--local", "-f", "-", "--type", "merge", "-p", "{}", "-o", "json"],
        input=manifests_yaml, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise DeployFileError(f"kubectl could not read the manifests: {result.stderr.strip()}")
    objects: list[dict[str, Any]] = []
    for document in _json_documents(result.stdout):
        objects.extend(document["items"] if document.get("kind") == "List" else [document])
    return objects


def kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True)
    if result.returncode != 0:
        raise DeployFileError(f"kubectl kustomize {directory}: {result.stderr.strip()}")
    return kubernetes_objects(result.stdout)


def compose_tool() -> list[str] | None:
    """The docker-compose command here, or None."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def compose_config(files: list[Path], env: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker-compose config` of these files (validated and merged) as a dict."""
    tool = compose_tool()
    if tool is None:
        raise DeployFileError("docker-compose is not installed")
    args = [*tool]
    for path in files:
        args += ["-f", str(path)]
    run_env = None if env is None else {**os.environ, **env}
    as_json = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, env=run_env)
    if as_json.returncode == 0 and as_json.stdout.lstrip().startswith("{"):
        return dict(json.loads(as_json.stdout))  # Compose v2
    result = subprocess.run([*args, "config"], capture_output=True, text=True, env=run_env)
    if result.returncode != 0:
        raise DeployFileError(f"docker-compose config: {result.stderr.strip()}")
    return _yaml_with_composes_python(result.stdout)


def _yaml_with_composes_python(text: str) -> dict[str, Any]:
    """Debian's docker-compose 1.x is a Python program with PyYAML: its interpreter reads YAML."""
    executable = shutil.which("docker-compose")
    if executable is None:
        raise DeployFileError("docker-compose is not installed")
    with open(executable, "rb") as handle:
        first = handle.readline().decode(errors="replace").strip()
    if not first.startswith("#!") or "python" not in first:
        raise DeployFileError("docker-compose gives no JSON and is not a Python program: cannot read its YAML")
    interpreter = first[2:].strip().split()
    result = subprocess.run(
        [*interpreter, "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
        input=text, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise DeployFileError(f"reading docker-compose's YAML: {result.stderr.strip()}")
    return dict(json.loads(result.stdout))
