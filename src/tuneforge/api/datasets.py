"""`/v1/datasets`: upload a dataset once, see its validation report, and use its id as a job's `data_path`."""

from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..errors import TuneforgeError
from ..jobs import service
from ..jobs.paths import PathPolicy
from ..jobs.service import DatasetOptions
from .auth import CurrentPrincipal, SettingsDep, StorageDep, StoreDep
from .errors import Responses, problems_response
from .responses import Dataset, DatasetDeleted, DatasetPage, DatasetSummary
from .uploads import receive_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_ERRORS: Responses = {
    401: {"description": "Missing or invalid API key"},
    404: {"description": "No such dataset (or not yours)"},
    422: {"description": "Invalid input: `detail` and one `problems` entry per field"},
}

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The dataset: .jsonl, .json, .csv, .tsv or .parquet.",
                        },
                        **{
                            name: {**schema, "description": DatasetOptions.model_fields[name].description}
                            for name, schema in DatasetOptions.model_json_schema()["properties"].items()
                        },
                    },
                }
            }
        },
    }
}


def _option_problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            out.append(f"{where}: unknown field; allowed: file, {', '.join(DatasetOptions.model_fields)}")
        else:
            out.append(f"{where}: {err['input']!r} is not allowed: {err['msg']}")
    return out


@router.post(
    "",
    status_code=201,
    summary="Upload a dataset and get its validation report",
    response_model=Dataset,
    openapi_extra=_UPLOAD_BODY,
    responses={**_ERRORS, 413: {"description": "Larger than the upload limit"}},
)
async def upload(
    request: Request, store: StoreDep, settings: SettingsDep, storage: StorageDep, principal: CurrentPrincipal
) -> JSONResponse | Dataset:
    """Multipart form: the file in `file`, optionally how to read it (`prompt_template`, `data_format`, ...) for the
    report. The answer has the dataset's `id` (use it as `data_config.data_path`) and its validation `report`;
    a dataset with problems is stored too, with `ok: false` and every problem listed."""
    dataset_id = service.new_dataset_id()
    dest = settings.uploads_dir / dataset_id
    try:
        up = await receive_upload(request, dest, max_bytes=int(settings.max_upload_bytes))
        try:
            options = DatasetOptions.model_validate(up.fields)
        except ValidationError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            return problems_response(_option_problems(exc))
        # receive_upload refuses a body without the file; the file part sets both
        assert up.path is not None and up.filename is not None
        report = await run_in_threadpool(service.validate_file, up.path, options, PathPolicy.from_settings(settings))
        # In the shared storage before it is listed: a job that names it may run on any machine.
        await run_in_threadpool(service.share_dataset, storage, dataset_id, up.path)
        ds = store.insert_dataset(
            dataset_id=dataset_id,
            owner=principal.owner,
            filename=up.filename,
            path=str(up.path),
            size_bytes=up.size,
            sha256=up.sha256,
            report=report,
        )
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # a refused upload leaves nothing behind
        raise
    return Dataset(**service.dataset_view(ds))


@router.get("", summary="List datasets, newest first", responses=_ERRORS)
def list_datasets(
    store: StoreDep,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> DatasetPage:  # the database's integer
    rows, total = store.list_datasets(owner=service.scope(principal), limit=limit, offset=offset)
    datasets = [DatasetSummary.model_validate(service.dataset_view(r, full=False)) for r in rows]
    return DatasetPage(datasets=datasets, total=total, limit=limit, offset=offset)


@router.get("/{dataset_id}", summary="A dataset with its validation report", responses=_ERRORS)
def get_dataset(dataset_id: str, store: StoreDep, principal: CurrentPrincipal) -> Dataset:
    return Dataset(**service.dataset_view(service.get_dataset(store, principal, dataset_id)))


@router.post("/{dataset_id}/validate", summary="Validate a dataset again with other reading options", responses=_ERRORS)
def revalidate(
    dataset_id: str, options: DatasetOptions, store: StoreDep, settings: SettingsDep, principal: CurrentPrincipal
) -> Dataset:
    """E.g. with the `prompt_template` you intend to train with: the report then checks its columns, renders the
    first example and, given `model_path`, counts tokens. The stored report is replaced."""
    ds = service.get_dataset(store, principal, dataset_id)
    try:
        report = service.validate_file(ds["path"], options, PathPolicy.from_settings(settings))
    except TuneforgeError:
        raise
    except FileNotFoundError:
        raise HTTPException(410, f"the file of dataset {dataset_id!r} is gone from the server") from None
    store.update_dataset_report(dataset_id, report)
    return Dataset(**service.dataset_view(service.get_dataset(store, principal, dataset_id)))


@router.delete("/{dataset_id}", summary="Delete a dataset", responses={**_ERRORS, 409: {"description": "In use"}})
def delete_dataset(
    dataset_id: str, store: StoreDep, storage: StorageDep, principal: CurrentPrincipal
) -> DatasetDeleted:
    service.delete_dataset(store, principal, dataset_id, storage)
    return DatasetDeleted(id=dataset_id, deleted=True)
