#include "server/db/session_effects.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

namespace dbpool::db {
namespace {

bool IsIdentStart(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_' ||
         static_cast<unsigned char>(c) >= 0x80;
}

bool IsIdentChar(char c) {
  return IsIdentStart(c) || std::isdigit(static_cast<unsigned char>(c)) || c == '$';
}

// Splits SQL into statements of words. Unquoted words are lower-cased, as
// PostgreSQL folds them; quoted identifiers keep their case. Literals,
// comments and dollar-quoted bodies produce no words: a function body that
// mentions SET is not running it.
class Lexer {
 public:
  explicit Lexer(absl::string_view sql) : s_(sql) {}

  // The words of the next statement; false when the text is used up.
  bool NextStatement(std::vector<std::string>* words) {
    words->clear();
    if (i_ >= s_.size()) return false;
    while (i_ < s_.size()) {
      const char c = s_[i_];
      if (c == ';') {
        ++i_;
        return true;
      }
      if (c == '-' && Peek(1) == '-') {
        while (i_ < s_.size() && s_[i_] != '\n') ++i_;
      } else if (c == '/' && Peek(1) == '*') {
        SkipBlockComment();
      } else if (c == '\'') {
        SkipQuoted('\'', /*backslash_escapes=*/false);
      } else if (c == '"') {
        words->push_back(QuotedIdentifier());
      } else if (c == '$' && DollarTagLength() > 0) {
        SkipDollarQuoted();
      } else if (IsIdentStart(c)) {
        const size_t start = i_;
        while (i_ < s_.size() && IsIdentChar(s_[i_])) ++i_;
        std::string word = absl::AsciiStrToLower(s_.substr(start, i_ - start));
        // E'...' is a string with backslash escapes, not the word "e".
        if ((word == "e") && i_ < s_.size() && s_[i_] == '\'') {
          SkipQuoted('\'', /*backslash_escapes=*/true);
          continue;
        }
        words->push_back(std::move(word));
      } else {
        ++i_;
      }
    }
    return true;
  }

 private:
  char Peek(size_t ahead) const {
    return i_ + ahead < s_.size() ? s_[i_ + ahead] : '\0';
  }

  void SkipBlockComment() {  // block comments nest in PostgreSQL
    int depth = 0;
    while (i_ < s_.size()) {
      if (s_[i_] == '/' && Peek(1) == '*') {
        ++depth;
        i_ += 2;
      } else if (s_[i_] == '*' && Peek(1) == '/') {
        i_ += 2;
        if (--depth == 0) return;
      } else {
        ++i_;
      }
    }
  }

  void SkipQuoted(char quote, bool backslash_escapes) {
    ++i_;  // the opening quote
    while (i_ < s_.size()) {
      const char c = s_[i_];
      if (backslash_escapes && c == '\\') {
        i_ += 2;
      } else if (c == quote) {
        ++i_;
        if (i_ < s_.size() && s_[i_] == quote) {
          ++i_;  // a doubled quote stands for itself
        } else {
          return;
        }
      } else {
        ++i_;
      }
    }
  }

  std::string QuotedIdentifier() {
    std::string out;
    ++i_;
    while (i_ < s_.size()) {
      if (s_[i_] == '"') {
        if (Peek(1) == '"') {
          out.push_back('"');
          i_ += 2;
          continue;
        }
        ++i_;
        break;
      }
      out.push_back(s_[i_++]);
    }
    return out;
  }

  // Length of the "$tag$" opening at i_, or 0 when '$' starts no dollar
  // quote ($1 is a parameter).
  size_t DollarTagLength() const {
    size_t j = i_ + 1;
    if (j < s_.size() && s_[j] == '$') return 2;
    if (j >= s_.size() || !IsIdentStart(s_[j])) return 0;
    while (j < s_.size() && IsIdentChar(s_[j]) && s_[j] != '$') ++j;
    return j < s_.size() && s_[j] == '$' ? j - i_ + 1 : 0;
  }

  void SkipDollarQuoted() {
    const size_t n = DollarTagLength();
    const absl::string_view tag = s_.substr(i_, n);
    const size_t end = s_.find(tag, i_ + n);
    i_ = end == absl::string_view::npos ? s_.size() : end + n;
  }

  absl::string_view s_;
  size_t i_ = 0;
};

SessionEffects ClassifyStatement(const std::vector<std::string>& words) {
  if (words.empty()) return kNoEffect;
  SessionEffects effects = kNoEffect;
  const std::string& first = words[0];
  // Both arms string_view: with a std::string arm the result would be a
  // temporary string, gone before the view is read.
  const absl::string_view second =
      words.size() > 1 ? absl::string_view(words[1]) : absl::string_view();
  if (first == "set" || first == "reset") {
    // SET LOCAL, SET TRANSACTION and SET CONSTRAINTS end with their
    // transaction, which the engine never leaves open.
    if (second != "local" && second != "transaction" && second != "constraints") {
      // SET [SESSION] ROLE, SET SESSION AUTHORIZATION; SESSION is otherwise
      // only the default scope of a setting.
      const size_t name = second == "session" ? 2 : 1;
      const absl::string_view what =
          words.size() > name ? absl::string_view(words[name]) : absl::string_view();
      effects |= what == "role" || what == "authorization" ? kIdentity : kSettings;
    }
  } else if (first == "listen") {
    effects |= kListen;
  } else if (first == "prepare") {
    if (second != "transaction") effects |= kPreparedStatements;
  } else if (first == "deallocate") {
    effects |= kPreparedStatements;
  } else if (first == "discard") {
    if (second == "all") effects |= kPreparedStatements;
  } else if (first == "declare") {
    effects |= kCursors;
  } else if (first == "do" || first == "call") {
    effects |= kAnything;
  } else if (first == "load") {
    effects |= kIrreversible;
  }
  static constexpr std::array<absl::string_view, 5> kBeforeTemp = {
      "create", "replace", "local", "global", "into"};
  for (size_t k = 0; k < words.size(); ++k) {
    const std::string& w = words[k];
    if (w == "set_config") {
      effects |= kSettings;
    } else if (absl::StartsWith(w, "pg_advisory_lock") ||
               absl::StartsWith(w, "pg_try_advisory_lock")) {
      effects |= kAdvisoryLocks;
    } else if (w == "pg_temp" || absl::StartsWith(w, "pg_temp_")) {
      effects |= kTempObjects;
    } else if ((w == "temp" || w == "temporary") && k > 0) {
      for (absl::string_view before : kBeforeTemp) {
        if (words[k - 1] == before) effects |= kTempObjects;
      }
    } else if (absl::StartsWith(w, "dblink_connect")) {
      effects |= kIrreversible;
    }
  }
  return effects;
}

}  // namespace

SessionEffects ClassifySessionEffects(absl::string_view sql) {
  SessionEffects effects = kNoEffect;
  Lexer lexer(sql);
  std::vector<std::string> words;
  while (lexer.NextStatement(&words)) effects |= ClassifyStatement(words);
  return effects;
}

bool Pipelinable(absl::string_view sql) {
  // Statements that run and end inside the implicit transaction of their
  // Sync. Anything else (transaction control, COPY, LOCK, utility
  // commands, SQL not recognised) runs alone.
  static constexpr std::array<absl::string_view, 8> kShareable = {
      "select", "with", "values", "table", "insert", "update", "delete", "merge"};
  Lexer lexer(sql);
  std::vector<std::string> words;
  bool any = false;
  while (lexer.NextStatement(&words)) {
    if (words.empty()) continue;
    if (std::find(kShareable.begin(), kShareable.end(), words[0]) == kShareable.end() ||
        ClassifyStatement(words) != kNoEffect) {
      return false;
    }
    any = true;
  }
  return any;
}

bool EndsTransaction(absl::string_view sql) {
  Lexer lexer(sql);
  std::vector<std::string> words;
  while (lexer.NextStatement(&words)) {
    if (words.empty()) continue;
    const std::string& w = words[0];
    if (w == "commit" || w == "end" || w == "abort") return true;
    if (w == "prepare" && words.size() > 1 && words[1] == "transaction") return true;
    if (w == "rollback") {
      // ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name stays inside.
      const bool to_savepoint =
          (words.size() > 1 && words[1] == "to") ||
          (words.size() > 2 && (words[1] == "work" || words[1] == "transaction") &&
           words[2] == "to");
      if (!to_savepoint) return true;
    }
  }
  return false;
}

std::vector<std::vector<std::string>> ResetCommands(SessionEffects effects) {
  std::vector<std::string> first;
  // Identity first, so that RESET ALL runs as the pool's own login.
  if (effects & kIdentity) {
    first = {"SET SESSION AUTHORIZATION DEFAULT", "RESET ROLE"};
  }
  if (effects & kSettings) first.push_back("RESET ALL");
  std::vector<std::string> rest;
  // Cursors may read temporary tables: close them before the tables go.
  if (effects & kCursors) rest.push_back("CLOSE ALL");
  if (effects & kTempObjects) rest.push_back("DISCARD TEMP");
  if (effects & kAdvisoryLocks) rest.push_back("SELECT pg_advisory_unlock_all()");
  if (effects & kListen) rest.push_back("UNLISTEN *");
  if (effects & kPreparedStatements) rest.push_back("DEALLOCATE ALL");
  if ((effects & kAnything) == kAnything) rest.push_back("DISCARD SEQUENCES");
  std::vector<std::vector<std::string>> groups;
  for (auto* group : {&first, &rest}) {
    if (!group->empty()) groups.push_back(std::move(*group));
  }
  return groups;
}

absl::string_view EffectKindName(int kind) {
  static constexpr std::array<absl::string_view, kEffectKinds> kNames = {
      "settings", "identity",            "temp_objects",
      "advisory_locks", "listen",        "prepared_statements",
      "cursors",  "anything",            "irreversible"};
  return kind >= 0 && kind < kEffectKinds ? kNames[kind] : "unknown";
}

std::vector<int> EffectKinds(SessionEffects effects) {
  if (effects & kIrreversible) return {8};
  if ((effects & kAnything) == kAnything) return {7};
  std::vector<int> kinds;
  for (int kind = 0; kind < 7; ++kind) {
    if (effects & (1u << kind)) kinds.push_back(kind);
  }
  return kinds;
}

}  // namespace dbpool::db
