# The installed package, as a stranger would use it: installs the build tree, moves the prefix
# somewhere else, and builds and runs tests/downstream against the moved copy with LibTorch reached
# through another path than the one attnkit was built with, and no CUDA toolkit on PATH. Also checks
# that the package names no path of the build machine and that every installed header compiles on
# its own. With FIND_TORCH_FIRST=ON (and nvcc at NVCC) a second project calls find_package(Torch)
# first and must get attnkit on its own torch target.
# Arguments: BUILD_DIR, SOURCE_DIR, WORK_DIR, GENERATOR, TORCH_ROOT, FIND_TORCH_FIRST, NVCC.
file(REMOVE_RECURSE "${WORK_DIR}")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "downstream: failed (${rc}): ${ARGN}")
  endif()
endfunction()

# 1. Install, then move the prefix: nothing may point back at where it was installed.
set(staging "${WORK_DIR}/staging")
set(prefix "${WORK_DIR}/moved/prefix")
run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${staging}" --component Unspecified)
file(MAKE_DIRECTORY "${WORK_DIR}/moved")
file(RENAME "${staging}" "${prefix}")
file(GLOB package_files "${prefix}/lib/cmake/attnkit/*.cmake")
foreach(f ${package_files})
  file(READ "${f}" text)
  foreach(path "${TORCH_ROOT}" "${staging}" "${BUILD_DIR}")
    string(FIND "${text}" "${path}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "downstream: ${f} names a path of the build machine: ${path}")
    endif()
  endforeach()
endforeach()

# 2. The same LibTorch at another path: a hard-linked copy of torch/ and the CUDA libraries next to
# it (their relative RUNPATHs expect that layout), a symlinked folder where hard links fail.
set(other "${WORK_DIR}/other-libtorch")
get_filename_component(site "${TORCH_ROOT}" DIRECTORY)
file(MAKE_DIRECTORY "${other}")
execute_process(COMMAND cp -al "${TORCH_ROOT}" "${other}/torch" RESULT_VARIABLE rc ERROR_QUIET)
if(rc EQUAL 0 AND EXISTS "${site}/nvidia")
  execute_process(COMMAND cp -al "${site}/nvidia" "${other}/nvidia" RESULT_VARIABLE rc ERROR_QUIET)
endif()
if(NOT rc EQUAL 0)
  file(REMOVE_RECURSE "${other}")
  file(CREATE_LINK "${site}" "${other}" SYMBOLIC)
endif()

# 3. Build and run the project against the moved prefix and the other LibTorch, no CUDA on PATH.
run(${CMAKE_COMMAND} -E env --unset=CUDA_HOME --unset=CUDA_PATH --unset=Torch_DIR PATH=/usr/bin:/bin
    ${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_PREFIX_PATH=${prefix} -DTorch_DIR=${other}/torch/share/cmake/Torch -DCHECK_HEADERS=ON)
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build" -j2)
run("${WORK_DIR}/build/downstream")
run("${WORK_DIR}/build/readme_example")
# The program must load LibTorch from the other path (ldd resolves as the loader would).
execute_process(COMMAND ldd "${WORK_DIR}/build/downstream" OUTPUT_VARIABLE deps)
string(REGEX MATCH "libtorch_cpu.so => [^ ]+" resolved "${deps}")
string(FIND "${resolved}" "${other}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "downstream: LibTorch not loaded from ${other}: ${resolved}")
endif()

# 4. A project that finds Torch itself first (TorchConfig.cmake of a CUDA torch needs nvcc).
if(FIND_TORCH_FIRST AND EXISTS "${NVCC}")
  get_filename_component(cuda_bin "${NVCC}" DIRECTORY)
  get_filename_component(cuda_root "${cuda_bin}/.." ABSOLUTE)
  run(${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/build-torch-first" -G "${GENERATOR}"
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix} -DTorch_DIR=${TORCH_ROOT}/share/cmake/Torch
      -DFIND_TORCH_FIRST=ON -DCUDAToolkit_ROOT=${cuda_root} -DCMAKE_CUDA_COMPILER=${NVCC}
      "-DTORCH_CUDA_ARCH_LIST=8.0;9.0")
  run(${CMAKE_COMMAND} --build "${WORK_DIR}/build-torch-first" -j2 --target downstream)
  run("${WORK_DIR}/build-torch-first/downstream")
  message("downstream: find_package(Torch) first: ok")
endif()
message("downstream: ok")
