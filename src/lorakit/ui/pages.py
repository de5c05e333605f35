"""The HTML pages (Jinja2 templates in ``templates/``): each one is rendered from the same library calls the
JSON API makes; the small scripts in ``static/`` call the API for edits and live updates."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from . import buckets, compare, runs, schema
from .configs import EXAMPLE, parse, text_version

router = APIRouter()


def render(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
    """A page with what every page's header shows (the workspace, the running jobs)."""
    s = request.app.state.ui
    jobs = s.store.all()
    active = [j for j in jobs if j["state"] in ("running", "stopping")]
    return s.templates.TemplateResponse(request, template, {"ws": s.ws, "active": active, **context}, status_code)


@router.get("/", response_class=HTMLResponse)
def home(request: Request):
    s = request.app.state.ui
    datasets = [s.datasets.summary(n) for n in s.datasets.names()]
    return render(request, "home.html", datasets=datasets, configs=s.configs.names(), jobs=s.store.all()[:8],
                  example="sdworld" in s.configs.names() and EXAMPLE in s.datasets.names())


@router.get("/datasets", response_class=HTMLResponse)
def datasets(request: Request):
    s = request.app.state.ui
    return render(request, "datasets.html", datasets=[s.datasets.summary(n) for n in s.datasets.names()])


@router.get("/datasets/{name}", response_class=HTMLResponse)
def dataset(name: str, request: Request, folder: str = "", page: int = 1, per_page: int = 60):
    s = request.app.state.ui
    listing = s.datasets.page(name, folder or None, page, per_page)
    models = [s.ws.rel(p) for p in sorted(s.ws.models.glob("*")) if (p / "config.json").is_file()]
    return render(request, "dataset.html", name=name, summary=s.datasets.summary(name), folder=folder,
                  listing=listing, caption_models=models)


@router.get("/datasets/{name}/tags", response_class=HTMLResponse)
def tag_page(name: str, request: Request):
    s = request.app.state.ui
    s.datasets.path(name)
    return render(request, "tags.html", name=name, models=list(s.configs.models()), batches=s.captions.batches()[::-1])


@router.get("/datasets/{name}/buckets", response_class=HTMLResponse)
def bucket_page(name: str, request: Request, config: str = ""):
    s = request.app.state.ui
    data, train, model = buckets.settings_from(parse(s.configs.read(config)) if config else None)
    for key in list(data) + list(train):  # the form's values override the config's
        raw = request.query_params.get(key)
        if raw is not None and raw != "":
            target = data if key in data else train
            field = next(f for sec in ("data", "train") for f in schema.fields(sec) if f.name == key)
            target[key] = schema.read_value(field, raw)
    for key in ("enable_bucket", "bucket_no_upscale", "random_crop"):
        if request.query_params.get("submitted"):
            data[key] = request.query_params.get(key) == "on"
    result = buckets.preview(s.ws, s.datasets.path(name), data, train, model)
    return render(request, "buckets.html", name=name, data=data, train=train, model=model, config=config,
                  configs=s.configs.names(), result=result, show=schema.show)


@router.get("/configs", response_class=HTMLResponse)
def configs(request: Request):
    s = request.app.state.ui
    return render(request, "configs.html", configs=s.configs.names(), presets=list(s.configs.presets()),
                  datasets=s.datasets.names())


@router.get("/configs/{name}", response_class=HTMLResponse)
def config(name: str, request: Request):
    s = request.app.state.ui
    text = s.configs.read(name)
    data = parse(text)
    sections = []
    if data.get("task") == "diffusion":
        for section in ("model", "data", "network", "train", "sample"):
            groups = [(title, [(f, *schema.current(data, f)) for f in fields]) for title, fields in schema.groups(section)]
            sections.append((section, groups))
    prompts = s.configs.prompts_path(name) if data.get("task") == "diffusion" else None
    prompts_text = prompts.read_text(encoding="utf-8") if prompts is not None and prompts.is_file() else ""
    return render(request, "config.html", name=name, text=text, version=text_version(text), sections=sections,
                  prompts=s.ws.rel(prompts) if prompts is not None else None, prompts_text=prompts_text,
                  show=schema.show, run=s.configs.free_run_name((data.get("train") or {}).get("output_name") or name))


@router.get("/jobs", response_class=HTMLResponse)
def jobs(request: Request):
    s = request.app.state.ui
    return render(request, "jobs.html", jobs=s.store.all(), errors=s.runner.errors[-5:])


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job(job_id: int, request: Request):
    s = request.app.state.ui
    j = s.store.get(job_id)
    run = s.ws.rel(j["run_dir"]).split("/", 1)[1] if j["kind"] == "train" and j["run_dir"] else None
    prompts = runs.sample_prompts(Path(j["run_dir"])) if run else []
    return render(request, "job.html", job=j, run=run, prompts=prompts)


@router.get("/runs/{run}/compare", response_class=HTMLResponse)
def compare_page(run: str, request: Request):
    s = request.app.state.ui
    return render(request, "compare.html", info=compare.info(s.ws, run))


@router.get("/generate", response_class=HTMLResponse)
def generate(request: Request):
    s = request.app.state.ui
    outputs = sorted((p for p in s.ws.outputs.rglob("*.png")), key=lambda p: p.stat().st_mtime, reverse=True)[:48]
    return render(request, "generate.html", models=list(s.configs.models()), loras=compare.lora_names(s.ws)["loras"],
                  outputs=[s.ws.rel(p) for p in outputs])


@router.get("/trash", response_class=HTMLResponse)
def trash(request: Request):
    return render(request, "trash.html", items=request.app.state.ui.datasets.trashed())


@router.get("/favicon.ico")
def favicon():
    return RedirectResponse("/static/favicon.svg")
