# Data-parallel attnkit train/eval on c10d (issue 17): tests/python/check_distributed.py, one case per
# test, each with 2 processes x 1 thread over loopback (Gloo), launched by the torchrun of the Python
# environment. Included from tests/CMakeLists.txt when the program is built and that Python exists.
# dist_parity (tests/distributed/dist_parity.cpp) runs the parity case's networks (with and without BatchNorm).
add_executable(dist_parity ${CMAKE_CURRENT_SOURCE_DIR}/distributed/dist_parity.cpp)
target_link_libraries(dist_parity PRIVATE attnkit_app)
attnkit_reuse_library_pch(dist_parity)

get_filename_component(_venv_bin "${ATTNKIT_PYTHON}" DIRECTORY)
set(_dist_work ${CMAKE_CURRENT_BINARY_DIR}/distributed)
foreach(case parity sync_bn sharding eval kill kill_sync_bn hang elastic two_nodes)
  add_test(NAME dist.${case}
    COMMAND "${ATTNKIT_PYTHON}" ${CMAKE_CURRENT_SOURCE_DIR}/python/check_distributed.py ${case}
      --attnkit $<TARGET_FILE:attnkit_cli> --parity $<TARGET_FILE:dist_parity> --torchrun ${_venv_bin}/torchrun
      --work ${_dist_work})
  # Two processes each: on a 2-core machine they must not share it with other tests.
  set_tests_properties(dist.${case} PROPERTIES TIMEOUT 600 RUN_SERIAL ON PASS_REGULAR_EXPRESSION "distributed ${case}: ok")
endforeach()

# Launch errors are one line and exit 1: nobody at the rendezvous within --dist-timeout; NCCL asked of a
# build without it.
attnkit_cli_test(NAME dist.rendezvous_timeout
  COMMAND env RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 $<TARGET_FILE:attnkit_cli> train --dist-timeout 2
    --max-images 100 --out ${_dist_work}/never
  EXIT 1 MATCH "^attnkit: rank 1 of 2: cannot meet the other processes at 127.0.0.1:1 \\(--dist-timeout 2 s\\): [^\n]*\n$")
attnkit_cli_test(NAME dist.nccl_not_built
  COMMAND env RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 $<TARGET_FILE:attnkit_cli> eval --dist-backend nccl
  EXIT 1 MATCH "^attnkit: --dist-backend nccl: this attnkit has no NCCL process group[^\n]*use --dist-backend gloo\n$")
