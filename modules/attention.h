// All attention blocks of attnkit (sequence attention, feature-map attention, CNN gates) and the
// factory that builds them by name.
#pragma once

#include <attnkit/modules/factory.h>
