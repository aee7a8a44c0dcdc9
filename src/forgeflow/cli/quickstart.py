"""`forgeflow quickstart`: the whole walkthrough on the embedded model and the sample data.

Each step reuses what an earlier run made, so running it again is quick.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

import typer

from forgeflow.cli.common import client, command, console, print_json
from forgeflow.names import url_path
from forgeflow.store.home import Paths, server_url
from forgeflow.store.states import JobStatus

BASE_MODEL = "smollm2-135m-instruct"
JOB_NAME = "quickstart-finetune"
MODEL_NAME = "quickstart-smollm2"
ENDPOINT = "quickstart"
CONNECTION = "custom-phi3"
# Enough optimizer steps on the sample data for the answers to change visibly, in a few CPU
# minutes: with packing, a batch of 2 rows of 256 tokens holds about 6 conversations.
SETTINGS = {"learning_rate": 1e-3, "num_train_epochs": 4, "lora_r": 16, "lora_alpha": 32,
            "per_device_train_batch_size": 2, "max_seq_length": 256, "logging_steps": 8}


def _step(n: int, text: str) -> None:
    console.rule(f"[bold]{n}. {text}", align="left")


def _ensure_server() -> None:
    from forgeflow.cli.server import start_detached

    c = client()
    if c.healthy():
        console.print(f"using the server at {c.url}")
        return
    u = urlparse(server_url())
    info = start_detached(u.hostname or "127.0.0.1", u.port or 8765)
    console.print(f"started a server at {info['url']} (pid {info['pid']}); stop it with: forgeflow serve stop")


def _finetune(c, data_dir: Path) -> dict:
    from forgeflow.cli.jobs import follow

    for job in c.get("/api/jobs"):
        if job["name"] == JOB_NAME and job["status"] == JobStatus.COMPLETED:
            console.print(f"reusing completed job {job['id']}")
            return job
        if job["name"] == JOB_NAME and job["status"] in (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING):
            console.print(f"following job {job['id']} already under way")
            return follow(job["id"])
    job = c.post("/api/jobs", {"model": BASE_MODEL, "training_data": str(data_dir / "train_data.jsonl"),
                               "validation_data": str(data_dir / "test_data.jsonl"), "hyperparameters": SETTINGS,
                               "name": JOB_NAME})
    console.print(f"queued job {job['id']} with {SETTINGS}")
    return follow(job["id"])


def _register(c, job: dict) -> dict:
    for mv in c.get("/api/models"):
        if mv.get("kind") != "base" and mv["name"] == MODEL_NAME and mv.get("source_job") == job["id"]:
            console.print(f"reusing {MODEL_NAME}:{mv['version']}")
            return mv
    mv = c.post("/api/models", {"name": MODEL_NAME, "from_job": job["id"], "description": "forgeflow quick start"})
    console.print(f"registered {mv['name']}:{mv['version']}")
    return mv


def _deploy(c, model_ref: str) -> None:
    from forgeflow.cli.endpoints import wait_ready
    from forgeflow.errors import NotFound

    try:
        c.get(url_path("api", "endpoints", ENDPOINT))
    except NotFound:
        c.post("/api/endpoints", {"name": ENDPOINT})
        console.print(f"created endpoint {ENDPOINT}")
    existing = {d["name"]: d for d in c.get(url_path("api", "endpoints", ENDPOINT, "deployments"))}
    wanted = {"blue": model_ref, "base": BASE_MODEL}
    for name, ref in wanted.items():
        dep = existing.get(name)
        if dep and dep["model"] != ref:
            if c.get(url_path("api", "endpoints", ENDPOINT))["traffic"].get(name):
                c.patch(url_path("api", "endpoints", ENDPOINT), {"traffic": {}})
            c.delete(url_path("api", "endpoints", ENDPOINT, "deployments", name))
            dep = None
        if dep is None:
            c.post(url_path("api", "endpoints", ENDPOINT, "deployments"), {"name": name, "model": ref})
    for name in wanted:
        dep = wait_ready(ENDPOINT, name)
        if dep["provisioning_state"] != "Succeeded":
            from forgeflow.errors import UpstreamError

            raise UpstreamError(f"deployment {name} failed: {dep.get('error')}")
        console.print(f"deployment {name} ({dep['model']}) ready")
    c.patch(url_path("api", "endpoints", ENDPOINT), {"traffic": {"blue": 100, "base": 0}})


def _flow_dir() -> Path:
    from forgeflow.flows.examples import walkthrough_flow_dir

    return walkthrough_flow_dir()


@command
def quickstart(
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary at the end, for scripts."),
) -> None:
    """Run the whole walkthrough locally: pull, prepare, fine-tune, register, deploy, connect, chat."""
    from forgeflow.chat import score_body
    from forgeflow.data.prepare import prepare_dataset
    from forgeflow.data.sample import SAMPLE_QUESTION
    from forgeflow.flows.executor import run_flow
    from forgeflow.store.workspace import Workspace

    t0 = time.monotonic()
    ws = Workspace.open()
    _step(1, "workspace and server")
    console.print(f"workspace {ws.paths.root}")
    _ensure_server()
    c = client()

    _step(2, f"base model {BASE_MODEL}")
    with console.status("importing the embedded model (first run only) ...", spinner="dots"):
        base = c.post("/api/models/pull", {"name": BASE_MODEL}, timeout=900)
    console.print(f"{base['name']} at {base['path']}")

    _step(3, "data: the sample dataset, split 80/20")
    data_dir = Paths.current().root / "quickstart" / "data"
    if not (data_dir / "train_data.jsonl").exists():
        res = prepare_dataset("sample", data_dir)
        console.print(f"{res.train_rows} training rows, {res.test_rows} test rows in {data_dir}")
    else:
        console.print(f"reusing {data_dir}")

    _step(4, "fine-tune (LoRA, CPU)")
    job = _finetune(c, data_dir)
    if job["status"] != JobStatus.COMPLETED:
        raise typer.Exit(1)

    _step(5, "register the fine-tuned model")
    mv = _register(c, job)

    _step(6, f"deploy to online endpoint {ENDPOINT}")
    _deploy(c, f"{mv['name']}:{mv['version']}")
    ep = c.get(url_path("api", "endpoints", ENDPOINT))
    console.print(f"scoring URI: {ep['scoring_uri']}")

    _step(7, "connect a flow and chat")
    keys = c.get(url_path("api", "endpoints", ENDPOINT, "credentials"))
    c.put(url_path("api", "connections", CONNECTION), {"name": CONNECTION, "type": "custom",
                                              "configs": {"endpoint": ep["scoring_uri"]}, "secrets": {"key": keys["primary_key"]}})
    body = score_body([{"role": "user", "content": SAMPLE_QUESTION}], temperature=0.0, do_sample=False,
                      max_new_tokens=64)
    base_answer = c.score(ENDPOINT, body, key=keys["primary_key"], deployment="base")["output"]
    flow = _flow_dir()
    result = run_flow(flow, {"input_data": SAMPLE_QUESTION}, connection_provider=c.connection)
    tuned_answer = result.outputs.get("answer")

    elapsed = time.monotonic() - t0
    summary = {"question": SAMPLE_QUESTION, "base_answer": base_answer, "finetuned_answer": tuned_answer,
               "job": job["id"], "model": f"{mv['name']}:{mv['version']}", "endpoint": ENDPOINT,
               "scoring_uri": ep["scoring_uri"], "connection": CONNECTION, "flow": str(flow), "seconds": round(elapsed, 1)}
    if json_out:
        print_json(summary)
        return
    console.rule("[bold]the same question, before and after fine-tuning", align="left")
    console.print(f"[bold]Q:[/] {SAMPLE_QUESTION}", highlight=False)
    console.print(f"[bold]base model:[/] {base_answer}", highlight=False)
    console.print(f"[bold]fine-tuned (through the flow):[/] {tuned_answer}", highlight=False)
    console.print(f"\ndone in {elapsed:.0f} s. Go further:", highlight=False)
    for line in (
        f"forgeflow job show {job['id']}",
        f"forgeflow online-endpoint show --name {ENDPOINT} --json",
        f"forgeflow online-endpoint get-credentials --name {ENDPOINT}",
        f"forgeflow flow test --flow {flow} --inputs input_data=\"Where is Quillfeather Robotics based?\"",
        "forgeflow serve stop",
    ):
        console.print(f"  {line}", highlight=False, markup=False)
