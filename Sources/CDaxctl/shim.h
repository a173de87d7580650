#include <daxctl/libdaxctl.h>
