"""Python source for a test's subprocess: `mallinfo2()`, glibc's heap statistics, whose
``hblkhd`` counts the bytes of blocks served by mmap (tests/test_allocator.py, test_runtime.py)."""

MALLINFO2 = """
import ctypes

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
"""
