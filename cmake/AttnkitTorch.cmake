# Finds LibTorch and defines the INTERFACE target `attnkit_torch` that everything links.
#
# Where LibTorch comes from, first match wins:
#   1. Torch_DIR or CMAKE_PREFIX_PATH (a LibTorch archive, or any torch install the user points at);
#   2. the Python environment made by scripts/setup.sh ($ATTNKIT_VENV, else ~/.cache/attnkit/venv),
#      asked for torch.utils.cmake_prefix_path.
#
# Why not just find_package(Torch)? PyPI's torch is a CUDA build, and its CMake config refuses to
# load where no CUDA toolkit exists. So when CUDA is off or unavailable we build a CPU-only target
# from the same files (headers + libtorch_cpu + libc10), which is all a CPU build needs.
#
# Inputs : ATTNKIT_CUDA (AUTO|ON|OFF), ATTNKIT_CUDA_HINTS (folders searched for nvcc).
# Outputs: attnkit_torch target, ATTNKIT_TORCH_ROOT, ATTNKIT_TORCH_VERSION, ATTNKIT_WITH_CUDA.
include_guard(GLOBAL)

function(_attnkit_python_torch_prefix out)
  set(venv "$ENV{ATTNKIT_VENV}")
  if(NOT venv)
    set(venv "$ENV{HOME}/.cache/attnkit/venv")
  endif()
  set(${out} "" PARENT_SCOPE)
  if(EXISTS "${venv}/bin/python")
    execute_process(
      COMMAND "${venv}/bin/python" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
      OUTPUT_VARIABLE prefix OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc ERROR_QUIET)
    if(rc EQUAL 0 AND prefix)
      set(${out} "${prefix}" PARENT_SCOPE)
      set(ATTNKIT_PYTHON "${venv}/bin/python" CACHE FILEPATH "Python with torch/torchvision/timm (test references)")
    endif()
  endif()
endfunction()

# ---- locate TorchConfig.cmake without loading it ------------------------------------------------
if(NOT ATTNKIT_TORCH_ROOT)
  set(_candidates "${Torch_DIR}" "$ENV{Torch_DIR}")
  foreach(_p ${CMAKE_PREFIX_PATH} $ENV{CMAKE_PREFIX_PATH})
    list(APPEND _candidates "${_p}" "${_p}/Torch" "${_p}/share/cmake/Torch")
  endforeach()
  list(FILTER _candidates EXCLUDE REGEX "^$")
  if(_candidates)
    find_file(_attnkit_torch_config TorchConfig.cmake PATHS ${_candidates} NO_DEFAULT_PATH NO_CACHE)
  endif()
  if(NOT _attnkit_torch_config)
    _attnkit_python_torch_prefix(_py_prefix)
    if(_py_prefix)
      find_file(_attnkit_torch_config TorchConfig.cmake
        PATHS "${_py_prefix}" PATH_SUFFIXES Torch NO_DEFAULT_PATH NO_CACHE)
    endif()
  endif()
  if(NOT _attnkit_torch_config)
    message(FATAL_ERROR
      "attnkit: LibTorch not found. Run scripts/setup.sh (it makes ~/.cache/attnkit/venv with torch), "
      "or point CMAKE_PREFIX_PATH / Torch_DIR at a LibTorch folder.")
  endif()
  get_filename_component(_dir "${_attnkit_torch_config}" DIRECTORY)  # <root>/share/cmake/Torch
  get_filename_component(_root "${_dir}/../../.." ABSOLUTE)
  set(ATTNKIT_TORCH_ROOT "${_root}" CACHE PATH "LibTorch root (has include/ and lib/)")
endif()
if(NOT ATTNKIT_PYTHON)
  _attnkit_python_torch_prefix(_unused)
endif()

# The version numbers sit in version.h, whose folder moved between releases.
foreach(_h include/torch/headeronly/version.h include/torch/csrc/api/include/torch/version.h)
  if(EXISTS "${ATTNKIT_TORCH_ROOT}/${_h}")
    file(STRINGS "${ATTNKIT_TORCH_ROOT}/${_h}" _ver REGEX "define TORCH_VERSION_(MAJOR|MINOR|PATCH) ")
    if(_ver)
      string(REGEX REPLACE ".*MAJOR ([0-9]+).*MINOR ([0-9]+).*PATCH ([0-9]+).*" "\\1.\\2.\\3" ATTNKIT_TORCH_VERSION "${_ver}")
      break()
    endif()
  endif()
endforeach()
set(_torch_has_cuda FALSE)
if(EXISTS "${ATTNKIT_TORCH_ROOT}/lib/libtorch_cuda.so")
  set(_torch_has_cuda TRUE)
endif()

# ---- CUDA: decide, then set the compiler ourselves so nvcc need not be on PATH --------------------
set(ATTNKIT_WITH_CUDA OFF)
if(NOT ATTNKIT_CUDA STREQUAL "OFF")
  if(NOT _torch_has_cuda)
    set(_why "this LibTorch is a CPU build")
  else()
    if(NOT CMAKE_CUDA_COMPILER)
      find_program(_attnkit_nvcc nvcc HINTS ${ATTNKIT_CUDA_HINTS} ENV CUDA_HOME ENV CUDA_PATH
                   PATH_SUFFIXES bin NO_CACHE NO_CMAKE_PATH NO_CMAKE_ENVIRONMENT_PATH NO_CMAKE_SYSTEM_PATH)
      if(_attnkit_nvcc)
        set(CMAKE_CUDA_COMPILER "${_attnkit_nvcc}" CACHE FILEPATH "CUDA compiler")
      endif()
    endif()
    if(CMAKE_CUDA_COMPILER)
      set(ATTNKIT_WITH_CUDA ON)
    else()
      set(_why "no nvcc in ATTNKIT_CUDA_HINTS (${ATTNKIT_CUDA_HINTS}), CUDA_HOME or PATH")
    endif()
  endif()
  if(NOT ATTNKIT_WITH_CUDA)
    if(ATTNKIT_CUDA STREQUAL "ON")
      message(FATAL_ERROR "attnkit: ATTNKIT_CUDA=ON but ${_why}")
    endif()
    message(STATUS "attnkit: CUDA kernels off (${_why})")
  endif()
endif()

add_library(attnkit_torch INTERFACE)
if(ATTNKIT_WITH_CUDA)
  # sm_80 (A100) and sm_90 (H100) as real code, plus sm_90 PTX for newer GPUs to JIT. Torch's own
  # config would override CMAKE_CUDA_ARCHITECTURES, so we keep ours in a variable of our own.
  set(ATTNKIT_CUDA_ARCHITECTURES "80-real;90" CACHE STRING "CUDA architectures of attnkit's kernels")
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0")   # stops torch's config from probing for a GPU
  get_filename_component(_cuda_bin "${CMAKE_CUDA_COMPILER}" DIRECTORY)
  get_filename_component(CUDAToolkit_ROOT "${_cuda_bin}/.." ABSOLUTE)
  enable_language(CUDA)
  unset(CMAKE_CUDA_ARCHITECTURES)        # (read by torch's config only to warn about it)
  unset(CMAKE_CUDA_ARCHITECTURES CACHE)
  list(PREPEND CMAKE_PREFIX_PATH "${ATTNKIT_TORCH_ROOT}")
  find_package(Torch REQUIRED CONFIG)
  set(CMAKE_CUDA_ARCHITECTURES ${ATTNKIT_CUDA_ARCHITECTURES})
  target_link_libraries(attnkit_torch INTERFACE ${TORCH_LIBRARIES})
  # TORCH_CXX_FLAGS carries the C++ ABI define; apply it to C++ only, nvcc gets its own below.
  separate_arguments(_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
  target_compile_options(attnkit_torch INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_flags}>)
else()
  # CPU-only target from the LibTorch files: works for CPU and CUDA builds of torch alike.
  find_library(_torch_cpu torch_cpu PATHS "${ATTNKIT_TORCH_ROOT}/lib" NO_DEFAULT_PATH NO_CACHE REQUIRED)
  find_library(_c10 c10 PATHS "${ATTNKIT_TORCH_ROOT}/lib" NO_DEFAULT_PATH NO_CACHE REQUIRED)
  target_include_directories(attnkit_torch SYSTEM INTERFACE
    "${ATTNKIT_TORCH_ROOT}/include" "${ATTNKIT_TORCH_ROOT}/include/torch/csrc/api/include")
  target_link_libraries(attnkit_torch INTERFACE "${_torch_cpu}" "${_c10}")
  # A consumer of a libattnkit with CUDA kernels (attnkitConfig.cmake sets this): link LibTorch's
  # CUDA libraries as well, so that they load from this LibTorch and not from the one attnkit was
  # built against.
  if(ATTNKIT_TORCH_CUDA_LIBRARIES)
    foreach(_lib torch_cuda c10_cuda torch)
      find_library(_attnkit_lib_${_lib} ${_lib} PATHS "${ATTNKIT_TORCH_ROOT}/lib" NO_DEFAULT_PATH NO_CACHE)
      if(_attnkit_lib_${_lib})
        target_link_libraries(attnkit_torch INTERFACE "${_attnkit_lib_${_lib}}")
      endif()
    endforeach()
  endif()
  # Same ABI as the one LibTorch was built with (recorded in its TorchConfig.cmake).
  file(STRINGS "${ATTNKIT_TORCH_ROOT}/share/cmake/Torch/TorchConfig.cmake" _abi REGEX "_GLIBCXX_USE_CXX11_ABI=[01]")
  string(REGEX MATCH "_GLIBCXX_USE_CXX11_ABI=[01]" _abi "${_abi}")
  if(_abi)
    target_compile_definitions(attnkit_torch INTERFACE "${_abi}")
  endif()
endif()
# at::parallel_for is a header template whose parallel branch exists only where _OPENMP is defined
# (ATen/ParallelOpenMP.h): code compiled without -fopenmp runs every parallel_for on ONE thread.
# So compile with OpenMP and link the libgomp that LibTorch ships, so that a single OpenMP runtime
# (and its thread pool and at::set_num_threads) serves LibTorch and attnkit alike.
# ATTNKIT_OPENMP=OFF is for ThreadSanitizer builds only: libgomp is not instrumented, so TSan cannot
# see its barriers and would flag every parallel region.
option(ATTNKIT_OPENMP "Compile attnkit with OpenMP so its at::parallel_for loops run multi-threaded" ON)
find_file(ATTNKIT_TORCH_GOMP NAMES libgomp.so.1 libgomp.so PATHS "${ATTNKIT_TORCH_ROOT}/lib" NO_DEFAULT_PATH)
if(NOT ATTNKIT_OPENMP)
  message(STATUS "attnkit: OpenMP off (ATTNKIT_OPENMP=OFF): CPU kernels run on one thread")
elseif(ATTNKIT_TORCH_GOMP AND CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  # clang's OpenMP code calls LLVM's runtime (__kmpc_*), which LibTorch's libgomp does not provide;
  # a second OpenMP runtime beside LibTorch's would give two thread pools.
  message(STATUS "attnkit: OpenMP off with clang (LibTorch ships GNU libgomp): CPU kernels run on one thread")
elseif(ATTNKIT_TORCH_GOMP)
  target_compile_options(attnkit_torch INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-fopenmp>)
  target_link_libraries(attnkit_torch INTERFACE "${ATTNKIT_TORCH_GOMP}")
else()
  find_package(OpenMP COMPONENTS CXX)
  if(OpenMP_CXX_FOUND)
    target_compile_options(attnkit_torch INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${OpenMP_CXX_FLAGS}>)
    target_link_libraries(attnkit_torch INTERFACE ${OpenMP_CXX_LIBRARIES})
  else()
    message(WARNING "attnkit: no OpenMP: attnkit's CPU kernels will run on one thread")
  endif()
endif()
target_compile_features(attnkit_torch INTERFACE cxx_std_17)
message(STATUS "attnkit: LibTorch ${ATTNKIT_TORCH_VERSION} at ${ATTNKIT_TORCH_ROOT}, CUDA kernels: ${ATTNKIT_WITH_CUDA}")
