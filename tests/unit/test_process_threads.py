import os

from cortex_tasks.core.process_threads import helper_threads


def test_one_pool_per_name_in_a_process():
    pool = helper_threads("test-helpers", 2)
    assert helper_threads("test-helpers", 2) is pool
    assert helper_threads("test-other-helpers", 1) is not pool
    assert pool.submit(lambda: 6 * 7).result(timeout=5) == 42


def test_a_forked_child_gets_pools_with_threads_of_its_own():
    parent_pool = helper_threads("test-forked", 1)
    parent_pool.submit(lambda: None).result(timeout=5)  # the parent's thread exists
    child = os.fork()
    if child == 0:  # the parent's thread did not survive the fork: the child must not use its pool
        ok = False
        try:
            pool = helper_threads("test-forked", 1)
            ok = pool is not parent_pool and pool.submit(lambda: 42).result(timeout=5) == 42
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.WEXITSTATUS(status) == 0
