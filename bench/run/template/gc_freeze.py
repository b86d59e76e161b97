"""The last module a warm template imports: collect once what the imports left, freeze the rest, resume
the collector (bench.run.template.gc_pause paused it).

Frozen objects are never walked again, so no collection in a cell walks the template's hundreds of
thousands of objects (a full one would take a noticeable time inside a measured window) or writes to
their pages, which the cell would then copy from the template (Python's gc docs: freeze before fork).
"""

from __future__ import annotations

import gc

gc.collect()
gc.freeze()
gc.enable()
