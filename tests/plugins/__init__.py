"""User functions for the python processor's tests.

Importable as ``plugins.<module>`` once ``tests/`` is on ``sys.path`` (the
tests prepend it). Not ``tests.plugins``: gmqtt installs a top-level ``tests``
package that shadows this directory.
"""
