"""Queue depth on kombu's filesystem transport: message files in the shared folder.

The transport writes each message as ``<ms>_<uuid>.<queue>.msg`` into
``data_folder_out`` and consumers take them from ``data_folder_in`` (the same
folder on one machine). One directory listing counts every queue. Meant for a
single machine (celery-stalk demo, development), not production.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

from . import QueueDepth

SUFFIX = ".msg"


class FilesystemQueueReader:
    def __init__(self, transport_options: dict):
        self.folder = transport_options.get("data_folder_in", "data_in")

    def read(self, queues: Iterable[str]) -> dict[str, QueueDepth]:
        counts = Counter(
            name.partition(".")[2][: -len(SUFFIX)]
            for name in os.listdir(self.folder)
            if name.endswith(SUFFIX)
        )
        return {queue: QueueDepth(messages=counts[queue]) for queue in sorted(set(queues))}

    def discover(self) -> list[str]:
        return []

    def close(self) -> None:
        pass
