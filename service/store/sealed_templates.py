"""Template bytes at rest: every backend seals and opens templates here, so there is one
place where a stored vector becomes bytes and back.

AES-GCM under the keyring's primary key (``service.crypto.template_crypto``), with the row's
face id, collection, uid, model and transform generation bound as associated data. A row
that fails to open is reported once (logged, kept in ``unreadable()``) and left out by the
caller: it is never matched against.
"""

from __future__ import annotations

import logging
import threading

from service.crypto.template_crypto import TemplateCipher, TemplateLabel
from service.errors import TemplateUnreadable
from service.pipeline.types import FloatArray

log = logging.getLogger(__name__)


class SealedTemplates:
    """Seals and opens templates with ``cipher``; remembers the rows that did not open."""

    def __init__(self, cipher: TemplateCipher) -> None:
        self.cipher = cipher
        self._unreadable: dict[int, TemplateUnreadable] = {}
        self._lock = threading.Lock()

    def seal(self, template: FloatArray, label: TemplateLabel) -> tuple[str, bytes]:
        """(key id, sealed bytes) for the row ``label`` names."""
        return self.cipher.seal(template, label)

    def open_or_raise(self, key_id: str | None, blob: bytes, label: TemplateLabel) -> FloatArray:
        """The template, or TemplateUnreadable (altered, swapped, or under an unknown key);
        the failure is reported either way."""
        try:
            return self.cipher.open(key_id, blob, label)
        except TemplateUnreadable as exc:
            self._report(exc, label)
            raise

    def open(self, key_id: str | None, blob: bytes, label: TemplateLabel) -> FloatArray | None:
        """The template, or None after reporting why it cannot be trusted."""
        try:
            return self.open_or_raise(key_id, blob, label)
        except TemplateUnreadable:
            return None

    def unreadable(self) -> dict[int, TemplateUnreadable]:
        """Faces whose templates failed to open so far, by face id."""
        with self._lock:
            return dict(self._unreadable)

    def _report(self, exc: TemplateUnreadable, label: TemplateLabel) -> None:
        with self._lock:
            first = label.face_id not in self._unreadable
            self._unreadable[label.face_id] = exc
        if first:
            log.error(
                "collection %r uid %r: %s; the face is excluded from matching (delete the"
                " user and enrol again, or restore the row from a backup)",
                label.collection,
                label.uid,
                exc.message,
            )
