#include "server/db/engine_counters.h"

namespace dbpool::db {

EngineCounters& Counters() {
  static auto* const counters = new EngineCounters();
  return *counters;
}

}  // namespace dbpool::db
