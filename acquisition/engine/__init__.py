"""The run engine: protocols executed step by step as an explicit, journaled state machine.

- the run states and the transitions allowed between them: :mod:`acquisition.run_states`.
- :mod:`.control`: what the terminal asks of a running run (pause, resume, abort, answers).
- what a step gets to work with (and keeps as its progress): :mod:`acquisition.steps.context`.
- the step types themselves are plug-ins: :mod:`acquisition.steps`.
- :mod:`.runner`: :class:`~.runner.ProtocolRun`, the loop over the steps.
- :mod:`.leasing`: a run takes all its instruments at once, or waits in line.
- :mod:`.safety`: instruments left safe, endings a cancellation cannot cut short.
- :mod:`.recovery`: where an interrupted run stands, read back from its documents.
- :mod:`.launch` / :mod:`.runs`: a run from ``run.start``, or resumed from the journal.
- :mod:`.steering`: ``run.pause``, ``run.resume``, ``run.answer``, ``run.recover``.
- :mod:`.services`: what the engine needs of the daemon (a narrow interface).
- :mod:`.setup`: what a run is started with.
- :mod:`.operator`: the virtual operator's hands on a simulated bench.
"""
