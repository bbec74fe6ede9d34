"""The tus 1.0.0 endpoints for resumable scan uploads; the protocol lives in annotator.uploads."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import uploads

NO_BODY = OpenApiResponse(description="No body; the answer is in the tus headers.")


class TusView(APIView):
    """Every answer carries `Tus-Resumable`; every request but OPTIONS must carry it too.
    OPTIONS tells only what the server supports, so it needs no login."""

    def get_permissions(self):
        return [] if self.request.method == "OPTIONS" else super().get_permissions()

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if request.method != "OPTIONS":
            uploads.check_version(request.headers.get("Tus-Resumable"))

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Tus-Resumable"] = uploads.TUS_VERSION
        if response.status_code == status.HTTP_412_PRECONDITION_FAILED:
            response["Tus-Version"] = uploads.TUS_VERSION
        return response


def _progress_headers(response: Response, upload) -> Response:
    response["Upload-Offset"] = str(upload.offset)
    response["Upload-Length"] = str(upload.length)
    response["Upload-Expires"] = upload.expires_at.strftime("%a, %d %b %Y %H:%M:%S GMT")
    response["Cache-Control"] = "no-store"
    return response


class UploadCollectionView(TusView):
    """`OPTIONS` tells what this tus server supports; `POST` creates an upload."""

    @extend_schema(responses={204: NO_BODY})
    def options(self, request, *args, **kwargs):
        response = Response(status=status.HTTP_204_NO_CONTENT)
        response["Tus-Version"] = uploads.TUS_VERSION
        response["Tus-Extension"] = uploads.TUS_EXTENSIONS
        response["Tus-Max-Size"] = str(settings.SCAN_UPLOAD_MAX_BYTES)
        return response

    @extend_schema(request=None, responses={201: NO_BODY})
    def post(self, request):
        upload = uploads.create_upload(
            request.user,
            request.headers.get("Upload-Length"),
            request.headers.get("Upload-Metadata", ""),
        )
        response = Response(status=status.HTTP_201_CREATED)
        response["Location"] = f"{request.path.rstrip('/')}/{upload.id}/"
        return _progress_headers(response, upload)


class UploadDetailView(TusView):
    """`HEAD` says how much arrived, `PATCH` appends a chunk, `DELETE` abandons the upload."""

    @extend_schema(responses={200: NO_BODY})
    def head(self, request, upload_id):
        upload = uploads.get_upload(request.user, upload_id)
        return _progress_headers(Response(status=status.HTTP_200_OK), upload)

    @extend_schema(request=None, responses={204: NO_BODY})
    def patch(self, request, upload_id):
        # The body is read from the raw request in small pieces, never parsed by DRF whole.
        raw = request._request
        upload = uploads.append(
            request.user,
            upload_id,
            offset_header=request.headers.get("Upload-Offset"),
            content_type=raw.content_type or "",
            content_length=request.headers.get("Content-Length"),
            stream=raw,
        )
        return _progress_headers(Response(status=status.HTTP_204_NO_CONTENT), upload)

    @extend_schema(responses={204: NO_BODY})
    def delete(self, request, upload_id):
        uploads.terminate(request.user, upload_id)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses={204: NO_BODY})
    def options(self, request, *args, **kwargs):
        return UploadCollectionView.options(self, request)
