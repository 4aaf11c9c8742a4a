"""Mock metald: the backend for fastgw's tests, demo and benchmarks (contract A6)."""

from fastgw.mock.metald import MockMetald, run_mock_metald
from fastgw.mock.vms import Behaviour, ConnectError, VmStore

__all__ = ["Behaviour", "ConnectError", "MockMetald", "VmStore", "run_mock_metald"]
