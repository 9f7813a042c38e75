"""``uploadFile``: a file sent with the GraphQL multipart request spec."""

from __future__ import annotations

import strawberry
from strawberry.file_uploads import Upload

from core import metrics
from core.errors import BadUserInput
from core.events import FileCreated, announce
from core.ratelimit import Action
from core.uploads import IncomingFile, store_upload
from core.users import require_verified
from schema.context import Info
from schema.nodes import File
from schema.permissions import IsAuthenticated
from schema.pipelines import UploadPipelineInput, upload_completed, upload_steps
from schema.ratelimits import count


@strawberry.type
class UploadMutation:
    @strawberry.mutation(
        permission_classes=[IsAuthenticated],
        description="Store the file sent as the multipart part mapped to `file` at `path` "
        "(default: the file's name). The bytes stream to storage as they arrive; the "
        "content type is sniffed from them. Multipart requests need the header "
        "`x-depot-csrf: 1` (or `Apollo-Require-Preflight: true`). With `pipeline`, "
        "the pipeline is queued with the file, in its transaction, and starts at once "
        "(`File.processing`).",
    )
    async def upload_file(
        self,
        info: Info,
        file: Upload,
        path: str | None = None,
        pipeline: UploadPipelineInput | None = None,
    ) -> File:
        incoming: object = file
        if not isinstance(incoming, IncomingFile):
            raise BadUserInput(
                "Send the file as a part of a multipart request (GraphQL multipart request "
                "spec), mapped to `variables.file`.",
                field="file",
            )
        principal = info.context.require_principal()
        require_verified(info.context.settings, principal.user)
        await count(info.context, Action.UPLOAD)
        steps = await upload_steps(info, pipeline, None)
        async with info.context.db() as db:
            # The pipeline, if any, is queued in the file's own transaction.
            row = await store_upload(
                db,
                info.context.storage,
                info.context.settings,
                principal.user.id,
                path,
                incoming,
                pipeline=steps,
            )
            db.expunge(row)  # kept: a later block's rollback (a raced advance) must not expire it
        metrics.UPLOAD_BYTES.labels("multipart").inc(row.size)
        await announce(info.context.events, FileCreated.of(row), owner_id=row.owner_id)
        if steps is not None:
            await upload_completed(info, row)
        return File.from_model(row)
