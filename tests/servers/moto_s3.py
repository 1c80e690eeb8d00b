"""moto's S3 server (``python tests/servers/moto_s3.py -H HOST -p PORT``) with conditional
writes made atomic.

moto answers a ``PUT`` with ``If-None-Match: *`` by looking for the object and then storing it,
two steps on a threaded server: two processes racing to commit one Delta log version can then
both succeed, and the second overwrites the first's commit (seen under load: one commit in 24
lost). S3 makes the check and the write one step, which is what deltalake's commits rely on;
a lock around moto's object writes restores that, so the race tests test orca, not moto.
"""

from __future__ import annotations

import threading

from moto import server
from moto.s3.responses import S3Response

_writes = threading.Lock()


def _atomic(method):
    def locked(self, *args, **kwargs):
        with _writes:
            return method(self, *args, **kwargs)

    return locked


# A plain PUT, and the POST that completes a multipart upload (it checks If-None-Match too).
S3Response._key_response_put = _atomic(S3Response._key_response_put)
S3Response._key_response_post = _atomic(S3Response._key_response_post)

if __name__ == "__main__":
    server.main()
