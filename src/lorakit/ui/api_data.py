"""The dataset API: datasets and folders, paged images, thumbnails, captions (save / undo), uploads,
trash, tag tools, the bucket preview and auto-captioning jobs."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from fastapi import APIRouter, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from . import buckets, tags
from .captioner import caption_argv
from .uploads import Uploader

router = APIRouter(prefix="/api")
MAX_TAG_PREVIEW = 2000  # changes listed in a preview (all are applied; the count says how many)


def ui(request: Request):
    return request.app.state.ui


class NewDataset(BaseModel):
    name: str
    repeats: int = 10
    tokens: str = ""


class NewFolder(BaseModel):
    kind: str = "img"
    repeats: int = 1
    tokens: str = ""
    folder: str | None = None  # rename: the folder's current ``img/N_name``


class CaptionEdit(BaseModel):
    path: str
    text: str = ""
    base: str | None = None


class PathBody(BaseModel):
    path: str = ""
    entry: str = ""


class TagOp(BaseModel):
    op: str
    tag: str = ""
    new: str = ""
    front: bool = False
    pattern: str = ""
    replacement: str = ""
    ignore_case: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    shuffle_caption: bool = False
    digest: str | None = None


class BucketSettings(BaseModel):
    config: str | None = None
    data: dict = Field(default_factory=dict)
    train: dict = Field(default_factory=dict)


class CaptionJob(BaseModel):
    model: str
    prefix: str = ""
    suffix: str = ""
    overwrite: bool = False
    prompt: str = ""
    max_new_tokens: int = 40


@router.get("/datasets")
def list_datasets(request: Request):
    d = ui(request).datasets
    return {"datasets": [d.summary(n) for n in d.names()]}


@router.post("/datasets")
def create_dataset(body: NewDataset, request: Request):
    root = ui(request).datasets.create(body.name, body.repeats, body.tokens)
    return {"created": ui(request).ws.rel(root), **ui(request).datasets.summary(body.name)}


@router.post("/datasets/{name}/folders")
def add_folder(name: str, body: NewFolder, request: Request):
    d = ui(request).datasets
    if body.folder:
        path = d.rename_folder(name, body.folder, body.repeats, body.tokens)
    else:
        path = d.add_folder(name, body.kind, body.repeats, body.tokens)
    return {"folder": ui(request).ws.rel(path), **d.summary(name)}


@router.get("/datasets/{name}/images")
def images(name: str, request: Request, folder: str | None = None, page: int = 1, per_page: int = 60):
    return ui(request).datasets.page(name, folder or None, page, per_page)


@router.get("/datasets/{name}/thumb")
def thumb(name: str, path: str, request: Request):
    s = ui(request)
    return FileResponse(s.thumbs.get(s.datasets.image(name, path)), media_type="image/webp",
                        headers={"Cache-Control": "private, max-age=86400"})


@router.get("/datasets/{name}/image")
def image(name: str, path: str, request: Request):
    return FileResponse(ui(request).datasets.image(name, path), headers={"Cache-Control": "no-cache"})


@router.put("/datasets/{name}/caption")
def save_caption(name: str, body: CaptionEdit, request: Request):
    s = ui(request)
    saved = s.captions.save(s.datasets.image(name, body.path), body.text, body.base)
    return {"text": saved.text or "", "version": saved.version, "conflict": saved.conflict, "message": saved.message}


@router.post("/datasets/{name}/caption/undo")
def undo_caption(name: str, body: PathBody, request: Request):
    s = ui(request)
    saved = s.captions.undo(s.datasets.image(name, body.path))
    return {"text": saved.text or "", "version": saved.version, "message": saved.message}


@router.post("/datasets/{name}/trash")
def trash_image(name: str, body: PathBody, request: Request):
    return {"trashed": ui(request).datasets.trash(name, body.path)}


@router.get("/trash")
def trash_list(request: Request):
    return {"items": ui(request).datasets.trashed()}


@router.post("/trash/restore")
def restore(body: PathBody, request: Request):
    return {"restored": ui(request).datasets.restore(body.entry)}


@router.post("/upload/{name}")
async def upload(name: str, request: Request, folder: str):
    """Multipart ``files`` (images, captions, ZIPs) into one folder of the dataset."""
    s = ui(request)
    target = s.datasets.folder(name, folder)
    form = await request.form(max_files=s.limits.max_files + 10, max_fields=20, max_part_size=s.limits.max_file_bytes)
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile) or hasattr(f, "filename")]
    if not files:
        raise ValueError("no files in the upload; send them as multipart form field 'files'.")
    up = Uploader(s.ws, target.path, s.limits)
    try:
        for f in files:
            name_ = f.filename or "unnamed"
            if name_.lower().endswith(".zip"):
                with tempfile.NamedTemporaryFile(dir=s.ws.state, suffix=".zip", delete=False) as tmp:
                    shutil.copyfileobj(f.file, tmp)
                try:
                    up.add_zip(Path(tmp.name), name_)
                finally:
                    Path(tmp.name).unlink(missing_ok=True)
            else:
                data = f.file.read(s.limits.max_file_bytes + 1)
                up.add(name_, data)
        report = up.finish()
    finally:
        await form.close()
    return {"accepted": report.accepted, "rejected": report.rejected, "total": report.total,
            **s.datasets.summary(name)}


# -- tags ----------------------------------------------------------------------------------------------
def _line_fn(body: TagOp):
    if body.op == "rename":
        return tags.rename(body.tag, body.new), f"rename tag {body.tag!r} to {body.new!r}"
    if body.op == "delete":
        return tags.delete(body.tag), f"delete tag {body.tag!r}"
    if body.op == "add":
        return tags.add(body.tag, body.front), f"add tag {body.tag!r} at the {'front' if body.front else 'end'}"
    if body.op == "regex":
        return tags.regex_fn(body.pattern, body.replacement, body.ignore_case), \
            f"replace /{body.pattern}/ with {body.replacement!r}"
    if body.op == "trigger":
        return tags.trigger(body.tag, body.keep_tokens, body.keep_tokens_separator), f"trigger word {body.tag!r} first"
    raise ValueError(f"op {body.op!r}: expected rename, delete, add, regex or trigger.")


@router.get("/datasets/{name}/tags")
def tag_table(name: str, request: Request):
    s = ui(request)
    return {"tags": tags.table(s.datasets.all_images(name)), "batches": s.captions.batches()[::-1]}


@router.post("/datasets/{name}/tags/preview")
def tag_preview(name: str, body: TagOp, request: Request):
    s = ui(request)
    fn, what = _line_fn(body)
    changes = tags.plan(s.datasets.all_images(name), fn)
    note = tags.trigger_note(body.keep_tokens, body.keep_tokens_separator, body.shuffle_caption) \
        if body.op == "trigger" else ""
    root = s.datasets.path(name)
    return {"what": what, "count": len(changes), "digest": tags.digest(changes), "note": note,
            "changes": [{"path": img.relative_to(root).as_posix(), "before": old or "", "after": new or ""}
                        for img, old, new in changes[:MAX_TAG_PREVIEW]]}


@router.post("/datasets/{name}/tags/apply")
def tag_apply(name: str, body: TagOp, request: Request):
    s = ui(request)
    fn, what = _line_fn(body)
    changes = tags.plan(s.datasets.all_images(name), fn)
    if body.digest != tags.digest(changes):
        raise FileExistsError("the captions changed since the preview (or no preview was made); preview again "
                              "before applying.")
    record = s.captions.apply([(img, new) for img, _, new in changes], f"{name}: {what}")
    return {"batch": record["id"], "changed": len(changes), "what": what}


@router.post("/datasets/{name}/tags/undo")
def tag_undo(name: str, body: PathBody, request: Request):
    return {"undone": ui(request).captions.undo_batch(body.entry)}


@router.get("/datasets/{name}/long-captions")
def long_captions(name: str, model: str, request: Request, limit: int = 75):
    s = ui(request)
    path = s.configs.model_path(model)
    tokenizer = tags.load_tokenizer(path)
    root = s.datasets.path(name)
    rows = tags.token_lengths(s.datasets.all_images(name), tokenizer, limit)
    return {"model": model, "limit": limit, "captions": [{**r, "image": r["image"].relative_to(root).as_posix()}
                                                         for r in rows]}


@router.post("/datasets/{name}/buckets")
def bucket_preview(name: str, body: BucketSettings, request: Request):
    s = ui(request)
    config = None
    if body.config:
        from .configs import parse

        config = parse(s.configs.read(body.config))
    data, train, model = buckets.settings_from(config)
    data.update(body.data)
    train.update(body.train)
    return {"data": data, "train": train, "model": model,
            **buckets.preview(s.ws, s.datasets.path(name), data, train, model)}


@router.post("/datasets/{name}/caption-job")
def caption_job(name: str, body: CaptionJob, request: Request):
    s = ui(request)
    root = s.datasets.path(name)
    model = s.ws.resolve(body.model, must_exist=True)
    job_dir = s.ws.state / "jobs" / f"caption-{time.time_ns()}"
    job_dir.mkdir(parents=True)
    progress = job_dir / "progress.json"
    argv = caption_argv(s.ws.rel(root), s.ws.rel(model), prefix=body.prefix, suffix=body.suffix,
                        overwrite=body.overwrite, prompt=body.prompt, max_new_tokens=body.max_new_tokens,
                        progress=s.ws.rel(progress))
    job = s.store.add("caption", name, argv, str(job_dir / "caption.log"),
                      meta={"dataset": name, "progress": str(progress), "done_file": None})
    s.runner.wake()
    return {"job": job}
