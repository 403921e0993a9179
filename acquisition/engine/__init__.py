"""The run engine: protocols executed step by step as an explicit, journaled state machine.

- :mod:`.states`: the run states and the transitions allowed between them.
- :mod:`.control`: what the terminal asks of a running run (pause, resume, abort, answers).
- :mod:`.context`: what a step gets to work with (and keeps as its progress).
- the step types themselves are plug-ins: :mod:`acquisition.steps`.
- :mod:`.runner`: :class:`~.runner.ProtocolRun`, the loop over the steps.
- :mod:`.leasing`: a run takes all its instruments at once, or waits in line.
- :mod:`.safety`: instruments left safe, endings a cancellation cannot cut short.
- :mod:`.recovery`: where an interrupted run stands, read back from its documents.
- :mod:`.launch` / :mod:`.runs`: a run from ``run.start``, or resumed from the journal.
- :mod:`.commands`: ``run.pause``, ``run.resume``, ``run.answer``, ``run.recover``.
- :mod:`.operator`: the virtual operator's hands on a simulated bench.
"""
