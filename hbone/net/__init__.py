"""The asyncio shell and the HTTP/2 engine. Importing it checks the HTTP/2 libraries' versions (h2deps)."""

from hbone.net.h2.deps import check as _check_h2_versions

_check_h2_versions()
