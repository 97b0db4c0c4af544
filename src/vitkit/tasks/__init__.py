"""The tasks a bundle can hold, each behind one small interface (see :mod:`vitkit.tasks.base`),
and the staged training loop the dense tasks share (:mod:`vitkit.tasks.trainer`)."""
