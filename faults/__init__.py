"""Fault injection for offload: real redis-server processes, real worker processes, and a
proxy, a Lambda stand-in and a callback path that misbehave on purpose. ``python -m faults.run``
(``make faults``) runs every scenario and prints its figures; tests/test_faults.py runs a
small version of each and asserts the exact outcome."""
