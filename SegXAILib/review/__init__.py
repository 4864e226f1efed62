"""``segxai review``: a results folder in the browser, drawn by Slicer's own views (trame-slicer).

:mod:`.folder` reads the folder (safely; a ``segxai batch`` folder's sub-folders too), :mod:`.session` builds and
drives a case's scene, :mod:`.reference` compares the case with its reference, :mod:`.curves` draws the
deletion/insertion curves, :mod:`.compute` runs ``segxai explain`` first when given a CT, :mod:`.page` lays the page
out, :mod:`.server` serves it. Needs the ``web`` extra (trame-slicer and the slicer-core it is built for).
"""
