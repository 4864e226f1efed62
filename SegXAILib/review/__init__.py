"""``segxai review``: a results folder in the browser, drawn by Slicer's own views (trame-slicer).

:mod:`.folder` reads the folder (safely), :mod:`.session` builds and drives a case's scene, :mod:`.page` lays the
page out, :mod:`.server` serves it. Needs the ``web`` extra (trame-slicer and the slicer-core it is built for).
"""
