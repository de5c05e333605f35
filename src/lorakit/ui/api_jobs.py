"""The training API: configs (form, YAML, presets, validate), launching, the job queue and its actions,
live job events (server-sent events), files of runs and outputs, comparison grids and generation."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field

from . import compare, schema
from .configs import parse, text_version
from .events import job_events
from .runner import lorakit_argv

router = APIRouter(prefix="/api")
ACTIONS = ("up", "down", "top", "run-now", "cancel", "stop", "save", "sample", "kill", "resume")
SERVED = ("runs", "outputs", "configs")  # top folders whose files the browser may read
SERVED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".txt", ".log", ".yaml", ".json", ".jsonl", ".safetensors")


def ui(request: Request):
    return request.app.state.ui


class NewConfig(BaseModel):
    name: str
    preset: str
    form: dict = Field(default_factory=dict)


class ConfigEdit(BaseModel):
    form: dict | None = None
    text: str | None = None
    base: str | None = None


class Launch(BaseModel):
    run: str = ""


@router.get("/configs")
def configs(request: Request):
    c = ui(request).configs
    return {"configs": c.names(), "presets": list(c.presets()), "models": list(c.models())}


@router.post("/configs")
def new_config(body: NewConfig, request: Request):
    path = ui(request).configs.create(body.name, body.preset, body.form)
    return {"created": ui(request).ws.rel(path)}


@router.get("/configs/{name}")
def read_config(name: str, request: Request):
    text = ui(request).configs.read(name)
    data = parse(text)
    return {"name": name, "text": text, "version": text_version(text), "data": data,
            "kind": "form" if data.get("task") == "diffusion" else "yaml"}


@router.put("/configs/{name}")
def save_config(name: str, body: ConfigEdit, request: Request):
    c = ui(request).configs
    if (body.form is None) == (body.text is None):
        raise ValueError("send either 'form' (field texts by section.key) or 'text' (the YAML), not both.")
    version = c.save_text(name, body.text, body.base) if body.text is not None else c.save_form(name, body.form, body.base)
    return {"version": version, "text": c.read(name)}


class Prompts(BaseModel):
    text: str


@router.put("/configs/{name}/prompts")
def save_prompts(name: str, body: Prompts, request: Request):
    """The sample-prompt file the config names (kohya's line format, checked line by line)."""
    s = ui(request)
    return {"saved": s.ws.rel(s.configs.save_prompts(name, body.text))}


@router.post("/configs/{name}/validate")
def validate(name: str, body: ConfigEdit, request: Request):
    """``lorakit validate`` on the saved config, or on the unsaved form/text when given."""
    c = ui(request).configs
    data = parse(c.read(name))
    if body.text is not None:
        data = parse(body.text)
    elif body.form is not None:
        data, errors = schema.apply_form(data, body.form)
        if errors:
            return {"task": "?", "problems": errors, "fields": schema.problem_fields(errors), "report": ""}
    return c.validate(data)


@router.post("/configs/{name}/launch")
def launch(name: str, body: Launch, request: Request):
    """Queue a training of the saved config as run ``runs/<run>`` (the launched YAML is kept with the run)."""
    s = ui(request)
    run = body.run or s.configs.free_run_name(_output_name(s.configs.read(name)) or name)
    text, run_dir = s.configs.launch_text(name, run)
    checked = s.configs.validate(parse(text))
    if checked["problems"]:
        raise ValueError(f"{len(checked['problems'])} problem(s); fix them before training: "
                         + " | ".join(checked["problems"][:5]))
    run_dir.mkdir(parents=True, exist_ok=True)
    s.ws.write_text(run_dir / "launch.yaml", text)
    job = s.store.add("train", run, lorakit_argv("train", f"runs/{run}/launch.yaml"), str(run_dir / "train.log"),
                      run_dir=str(run_dir), config=name, meta={"task": parse(text).get("task", "text")})
    s.runner.wake()
    return {"job": job, "run": run}


def _output_name(text: str) -> str | None:
    train = parse(text).get("train")
    return train.get("output_name") if isinstance(train, dict) and isinstance(train.get("output_name"), str) else None


@router.get("/jobs")
def jobs(request: Request):
    s = ui(request)
    return {"jobs": s.store.all(), "runner_errors": s.runner.errors[-5:]}


@router.get("/jobs/{job_id}")
def job(job_id: int, request: Request):
    return ui(request).store.get(job_id)


@router.post("/jobs/{job_id}/{action}")
def job_action(job_id: int, action: str, request: Request):
    s = ui(request)
    if action not in ACTIONS:
        raise LookupError(f"action {action!r}: no such job action; expected one of {', '.join(ACTIONS)}.")  # 404
    if action in ("up", "down", "top"):
        s.store.move(job_id, action)
    elif action == "run-now":
        s.runner.run_now(job_id)
    elif action in ("stop", "save", "sample"):
        s.runner.control(job_id, action)
    else:
        getattr(s.runner, action)(job_id)
    s.runner.wake()
    return s.store.get(job_id)


@router.get("/jobs/{job_id}/events")
async def events(job_id: int, request: Request):
    ui(request).store.get(job_id)  # 404 before the stream starts
    return StreamingResponse(job_events(request, job_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/files")
def files(path: str, request: Request):
    """A file of runs/, outputs/ or configs/ (images, logs, configs); nothing else of the workspace."""
    s = ui(request)
    full = s.ws.resolve(path, must_exist=True)
    top = Path(s.ws.rel(full)).parts[0] if full != s.ws.root else ""
    if top not in SERVED or not full.is_file() or full.suffix.lower() not in SERVED_SUFFIXES:
        raise PermissionError(f"{path}: only files of {', '.join(SERVED)} ({', '.join(SERVED_SUFFIXES)}) are served.")
    kind = "text/plain; charset=utf-8" if full.suffix in (".log", ".yaml", ".txt", ".jsonl") else None
    return FileResponse(full, media_type=kind, headers={"Cache-Control": "no-cache"})


@router.get("/png-info")
def png_info(path: str, request: Request):
    """The A1111 infotext (``parameters`` chunk) of a PNG of runs/ or outputs/."""
    from PIL import Image

    files(path, request)  # the same confinement
    with Image.open(ui(request).ws.resolve(path)) as img:
        return {"path": path, "parameters": img.info.get("parameters", ""), "size": list(img.size)}


# -- comparing and generating ----------------------------------------------------------------------------
@router.get("/runs/{run}/compare")
def compare_info(run: str, request: Request):
    s = ui(request)
    return compare.info(s.ws, run)


@router.post("/runs/{run}/grid")
def grid(run: str, body: compare.GridRequest, request: Request):
    s = ui(request)
    argv, out, meta = compare.grid_job(s.ws, run, body)
    job = s.store.add("grid", run, argv, str(out.with_suffix(".log")), run_dir=str(out.parent.parent),
                      meta={**meta, "done_file": str(out)})
    s.runner.wake()
    return {"job": job, "grid": s.ws.rel(out)}


@router.get("/loras")
def loras(request: Request):
    return compare.lora_names(ui(request).ws)


@router.post("/generate")
def generate(body: compare.GenerateRequest, request: Request):
    s = ui(request)
    argv, out, meta = compare.generate_job(s.ws, s.configs, body)
    job = s.store.add("generate", " ".join(body.prompt.split())[:48], argv, str(out / "generate.log"),
                      meta={**meta, "done_file": None})
    s.runner.wake()
    return {"job": job, "outputs": s.ws.rel(out)}
