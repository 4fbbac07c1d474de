# Package targets (make deb, make rpm); included by the top-level Makefile.
