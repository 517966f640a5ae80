// See ../README.md: nothing of gloo is needed from this header.
#pragma once
