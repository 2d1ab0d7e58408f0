"""The tools that make and grade the course (hand-written, not generated from the notebooks):

- ``notebooks``: the one-source workflow for authors (solutions/ -> chapters/, package exports, the book);
- ``selfcheck``: a learner's summary of a chapter's checks;
- ``grade`` and ``sandbox``: an instructor's grading of a class, each submission in a guarded kernel;
- ``similarity``: an instructor's report of answers nearly identical to the solution or to each other;
- ``cli``: the ``transformer-course`` command that fronts them.
"""
