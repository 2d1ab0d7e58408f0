"""The GitHub workflows (.github/workflows/), checked offline.

Neither actionlint nor check-jsonschema (with its GitHub-workflow schema) is in the pinned
environment, so these tests parse each file and check its structure against the keys GitHub
documents ("Workflow syntax for GitHub Actions"), then what each workflow is for: the suite on
pull requests and on main, the book deployed to GitHub Pages from main, a release that tags
v<version>. The release's version step runs here, in a copy of the repository.
"""

import os
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from transformer_course.tools.notebooks import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
TOP = {"name", "run-name", "on", "permissions", "env", "defaults", "concurrency", "jobs"}
JOB = {"name", "needs", "permissions", "runs-on", "environment", "concurrency", "outputs", "env",
       "defaults", "if", "steps", "timeout-minutes", "strategy", "continue-on-error", "container",
       "services", "uses", "with", "secrets"}
STEP = {"id", "if", "name", "uses", "run", "working-directory", "shell", "with", "env",
        "continue-on-error", "timeout-minutes"}
EVENTS = {"push", "pull_request", "workflow_dispatch", "workflow_run", "schedule", "release",
          "pull_request_target", "workflow_call"}
PERMISSIONS = {"actions", "attestations", "checks", "contents", "deployments", "id-token", "issues",
               "discussions", "packages", "pages", "pull-requests", "repository-projects",
               "security-events", "statuses"}


def load(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    if True in wf:  # YAML 1.1 reads the key `on` as the boolean true
        wf["on"] = wf.pop(True)
    return wf


def runs(wf: dict) -> str:
    return "\n".join(s.get("run", "") for job in wf["jobs"].values() for s in job.get("steps", []))


def uses(wf: dict) -> list[str]:
    return [s["uses"] for job in wf["jobs"].values() for s in job.get("steps", []) if "uses" in s]


FILES = sorted(p.name for p in WORKFLOWS.glob("*.yml"))


def test_the_three_workflows_are_there():
    assert set(FILES) >= {"test.yml", "book.yml", "release.yml"}


@pytest.mark.parametrize("name", FILES)
def test_workflow_structure(name):
    wf = load(name)
    assert set(wf) <= TOP, f"{name}: unknown top-level keys {set(wf) - TOP}"
    assert {"name", "on", "jobs"} <= set(wf), f"{name}: needs name, on and jobs"
    assert set(wf["on"]) <= EVENTS, f"{name}: unknown events {set(wf['on']) - EVENTS}"
    for scope in [wf] + list(wf["jobs"].values()):
        perms = scope.get("permissions", {})
        assert set(perms) <= PERMISSIONS and set(perms.values()) <= {"read", "write", "none"}, perms
    for job_id, job in wf["jobs"].items():
        assert re.fullmatch(r"[A-Za-z_][\w-]*", job_id), job_id
        assert set(job) <= JOB, f"{name}/{job_id}: unknown keys {set(job) - JOB}"
        assert "runs-on" in job and job.get("steps"), f"{name}/{job_id}: runs-on and steps"
        assert isinstance(job.get("timeout-minutes"), int), f"{name}/{job_id}: set timeout-minutes"
        needs = job.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs:
            assert need in wf["jobs"], f"{name}/{job_id}: needs an unknown job {need}"
        ids = [s["id"] for s in job["steps"] if "id" in s]
        assert len(ids) == len(set(ids)), f"{name}/{job_id}: step ids repeat"
        for step in job["steps"]:
            assert set(step) <= STEP, f"{name}/{job_id}: unknown step keys {set(step) - STEP}"
            assert ("uses" in step) != ("run" in step), f"{name}/{job_id}: a step uses or runs"
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+(\.\d+)*|[0-9a-f]{40})", step["uses"]), \
                    f"{name}: pin {step['uses']} to a release or a commit"
        # every steps.<id> an expression reads is a step of this job
        text = yaml.safe_dump(job)
        for ref in re.findall(r"steps\.([\w-]+)\.", text):
            assert ref in ids, f"{name}/{job_id}: an expression reads steps.{ref}, not a step here"
    text = (WORKFLOWS / name).read_text()
    assert text.count("${{") == text.count("}}"), f"{name}: unbalanced ${{{{ }}}}"


def test_the_suite_runs_on_pull_requests_and_main():
    wf = load("test.yml")
    assert "pull_request" in wf["on"] and wf["on"]["push"]["branches"] == ["main"]
    assert "bash tasks.sh test" in runs(wf)
    assert "cpu" in str(wf["jobs"]["test"].get("env", {})), "the CPU build of torch"


def test_the_book_is_deployed_to_pages_from_main():
    wf = load("book.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    assert "bash tasks.sh book" in runs(wf)
    upload = [s for s in wf["jobs"]["build"]["steps"] if s.get("uses", "").startswith(
        "actions/upload-pages-artifact@")]
    assert upload and upload[0]["with"]["path"] == "_build/html"
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "build" and "refs/heads/main" in deploy["if"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert any(u.startswith("actions/deploy-pages@") for u in uses(wf))


def test_the_release_tags_the_version_the_notebooks_install(tmp_path):
    """The release's version step, run in a copy of the repository, names v<version> of
    pyproject.toml: the ref the Colab cells install and the launch buttons open (test_book.py)."""
    wf = load("release.yml")
    assert wf["on"]["workflow_run"]["workflows"] == [load("test.yml")["name"]], "after the tests"
    assert wf["permissions"] == {"contents": "write"}
    steps = wf["jobs"]["tag"]["steps"]
    version_step = next(s for s in steps if s.get("id") == "version")
    assert "git push origin" in runs(wf) and "gh release create" in runs(wf)

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

    def outputs() -> dict:
        out = tmp_path / "github_output"
        out.write_text("")
        subprocess.run(["bash", "-e", "-c", version_step["run"]], cwd=repo, check=True,
                       env={**os.environ, "GITHUB_OUTPUT": str(out)})
        return dict(line.split("=", 1) for line in out.read_text().split())

    assert outputs() == {"tag": f"v{version}", "exists": "false"}
    subprocess.run(["git", "tag", f"v{version}"], cwd=repo, check=True)
    assert outputs() == {"tag": f"v{version}", "exists": "true"}  # no second release
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["branch"] == f"v{version}"
