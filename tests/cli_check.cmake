# Runs one command of a CLI test and checks all of it: the exit code, the output, and the files that
# must or must not exist afterwards. (CTest alone cannot: once PASS_REGULAR_EXPRESSION is set it
# ignores the exit code.) Used through attnkit_cli_test() in tests/CMakeLists.txt:
#
#   cmake -DSPEC=spec.cmake -P cli_check.cmake -- COMMAND ARGS...
#
# where spec.cmake sets any of the variables below (bracket-quoted, so any character goes):
# EXIT      the exit code the command must return (default 0).
# MATCH_n   CMake regular expressions that stdout and stderr must each match; the two streams are one
#           pipe (2>&1), so lines appear in the order the program wrote them.
# NO_MATCH  one they must not match.
# EXISTS / ABSENT  lists of paths that must / must not exist afterwards.
# SETUP / AFTER    sh command lines run before / after the command; each must exit 0 (AFTER checks
#                  what a file holds, say).
# ATTNKIT_CLI_CHECK_EXIT_OFFSET (environment) is added to EXIT: with it set to 1, every CLI test must
# fail, which shows that none of them can pass with a wrong exit code.

include("${SPEC}")
set(cmd "")
set(after_dashes OFF)
math(EXPR last "${CMAKE_ARGC} - 1")
foreach(i RANGE ${last})
  if(after_dashes)
    list(APPEND cmd "${CMAKE_ARGV${i}}")
  elseif(CMAKE_ARGV${i} STREQUAL "--")
    set(after_dashes ON)
  endif()
endforeach()
if(NOT cmd)
  message(FATAL_ERROR "cli_check: no command after --")
endif()
if(NOT DEFINED EXIT)
  set(EXIT 0)
endif()
if(DEFINED ENV{ATTNKIT_CLI_CHECK_EXIT_OFFSET})
  math(EXPR EXIT "${EXIT} + $ENV{ATTNKIT_CLI_CHECK_EXIT_OFFSET}")
endif()

function(run_shell what line)
  execute_process(COMMAND sh -c "${line}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "cli_check: ${what} failed (exit ${rc}): ${line}\n${out}")
  endif()
endfunction()

if(DEFINED SETUP)
  run_shell("SETUP" "${SETUP}")
endif()

execute_process(COMMAND sh -c "exec \"$@\" 2>&1" sh ${cmd} RESULT_VARIABLE rc OUTPUT_VARIABLE out)
string(REPLACE ";" " " shown "${cmd}")
message("$ ${shown}\n${out}-- exit code ${rc}")

set(failures "")
if(NOT rc STREQUAL "${EXIT}")
  list(APPEND failures "exit code ${rc}, expected ${EXIT}")
endif()
set(i 0)
while(DEFINED MATCH_${i})
  if(NOT out MATCHES "${MATCH_${i}}")
    list(APPEND failures "the output does not match: ${MATCH_${i}}")
  endif()
  math(EXPR i "${i} + 1")
endwhile()
if(DEFINED NO_MATCH AND out MATCHES "${NO_MATCH}")
  list(APPEND failures "the output matches what it must not: ${NO_MATCH}")
endif()
foreach(f IN LISTS EXISTS)
  if(NOT EXISTS "${f}")
    list(APPEND failures "missing file ${f}")
  endif()
endforeach()
foreach(f IN LISTS ABSENT)
  if(EXISTS "${f}")
    list(APPEND failures "file should not exist: ${f}")
  endif()
endforeach()
if(DEFINED AFTER)
  execute_process(COMMAND sh -c "${AFTER}" RESULT_VARIABLE arc OUTPUT_VARIABLE aout ERROR_VARIABLE aout)
  if(NOT arc EQUAL 0)
    list(APPEND failures "AFTER check failed (exit ${arc}): ${AFTER}\n${aout}")
  endif()
endif()

if(failures)
  string(REPLACE ";" "\n  " failures "${failures}")
  message(FATAL_ERROR "cli_check FAILED:\n  ${failures}")
endif()
message("cli_check: ok")
