"""Datasets: chat files in the workspace, listed, previewed, validated and uploaded."""

from __future__ import annotations

import pydantic
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from forgeflow.api.security import CONTRIBUTOR, READER, audit_target, services
from forgeflow.data.library import DatasetLibrary
from forgeflow.data.validate import row_check

router = APIRouter(tags=["datasets"])


class PrepareRequest(pydantic.BaseModel, extra="forbid", allow_inf_nan=False):
    dataset: str = pydantic.Field("sample", description="`sample`, a local file or folder, or a hub dataset name.")
    prefix: str = pydantic.Field(description="Writes <prefix>_train.jsonl and <prefix>_test.jsonl.")
    test_size: float = pydantic.Field(0.2, gt=0, description="Test share in (0, 1), or a row count.")
    seed: int = pydantic.Field(42, ge=0, le=2**32 - 1, description="Seed of the shuffle before the split.")
    overwrite: bool = False


# The training method whose rows a dataset is checked as; the same names as the job's `method` hyperparameter.
METHOD = Query("sft", description="Validate as training data of this method: sft (chat rows with 'messages', the "
               "default) or dpo (preference rows with 'prompt', 'chosen' and 'rejected').")


def library(ff=Depends(services)) -> DatasetLibrary:
    return DatasetLibrary(ff.ws.paths.datasets)


@router.get("/datasets", dependencies=READER)
def list_datasets(lib: DatasetLibrary = Depends(library)) -> list[dict]:
    return lib.list()


@router.post("/datasets/prepare", status_code=201, dependencies=CONTRIBUTOR)
def prepare(body: PrepareRequest, request: Request, lib: DatasetLibrary = Depends(library)) -> dict:
    """Split a dataset 80/20 (or `test_size`) into two workspace datasets, as `forgeflow data prepare` does."""
    audit_target(request, body.prefix)
    size = int(body.test_size) if body.test_size >= 1 and body.test_size.is_integer() else body.test_size
    return lib.prepare(body.dataset, body.prefix, test_size=size, seed=body.seed, overwrite=body.overwrite)


@router.get("/datasets/{name}", dependencies=READER)
def show_dataset(name: str, method: str = METHOD, lib: DatasetLibrary = Depends(library)) -> dict:
    """The dataset with its validation as `method`'s rows: every bad row with its line number (up to 200 problems),
    and `fits_method` naming the other method when every row has that one's shape."""
    return lib.show(name, method)


@router.get("/datasets/{name}/rows", dependencies=READER)
def dataset_rows(name: str, offset: int = Query(0, ge=0, le=2**53), limit: int = Query(20, ge=1, le=200),
                 method: str = METHOD, lib: DatasetLibrary = Depends(library)) -> dict:
    """A page of rows as `method` reads them: messages, or prompt, chosen and rejected."""
    return lib.rows(name, offset, limit, method)


@router.put("/datasets/{name}", status_code=201, dependencies=CONTRIBUTOR)
async def upload_dataset(name: str, request: Request, overwrite: bool = False, method: str = METHOD,
                         lib: DatasetLibrary = Depends(library)) -> dict:
    """Upload a chat or preference file (.jsonl, .json, .csv, .parquet) as the raw request body; answers with its
    validation as `method`'s rows."""
    row_check(method)  # a method no one trains with is refused before the upload is stored
    await lib.upload(name, request.stream(), overwrite=overwrite)
    return await run_in_threadpool(lib.show, name, method)


@router.delete("/datasets/{name}", dependencies=CONTRIBUTOR)
async def delete_dataset(name: str, lib: DatasetLibrary = Depends(library)) -> dict:
    await run_in_threadpool(lib.delete, name)
    return {"deleted": name}
