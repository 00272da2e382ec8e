"""The report's building blocks (:mod:`mmfv.report.html`): HTML helpers and read access to a run
folder's results. Each stage renders its own report section with them; the page is assembled by
the report stage (:func:`mmfv.stages.report.build_report`)."""
