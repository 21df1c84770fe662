#include "vlmo/vqa_answer.h"

#include <cctype>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

#include "vlmo/error.h"

namespace vlmo {
namespace {

// clang-format off
const std::unordered_map<std::string, std::string>& contractions() {
  static const std::unordered_map<std::string, std::string> k = {
      {"aint", "ain't"}, {"arent", "aren't"}, {"cant", "can't"}, {"couldve", "could've"},
      {"couldnt", "couldn't"}, {"couldn'tve", "couldn't've"}, {"couldnt've", "couldn't've"},
      {"didnt", "didn't"}, {"doesnt", "doesn't"}, {"dont", "don't"}, {"hadnt", "hadn't"},
      {"hadnt've", "hadn't've"}, {"hadn'tve", "hadn't've"}, {"hasnt", "hasn't"}, {"havent", "haven't"},
      {"hed", "he'd"}, {"hed've", "he'd've"}, {"he'dve", "he'd've"}, {"hes", "he's"}, {"howd", "how'd"},
      {"howll", "how'll"}, {"hows", "how's"}, {"Id've", "I'd've"}, {"I'dve", "I'd've"}, {"Im", "I'm"},
      {"Ive", "I've"}, {"isnt", "isn't"}, {"itd", "it'd"}, {"itd've", "it'd've"}, {"it'dve", "it'd've"},
      {"itll", "it'll"}, {"let's", "let's"}, {"maam", "ma'am"}, {"mightnt", "mightn't"},
      {"mightnt've", "mightn't've"}, {"mightn'tve", "mightn't've"}, {"mightve", "might've"},
      {"mustnt", "mustn't"}, {"mustve", "must've"}, {"neednt", "needn't"}, {"notve", "not've"},
      {"oclock", "o'clock"}, {"oughtnt", "oughtn't"}, {"ow's'at", "'ow's'at"}, {"'ows'at", "'ow's'at"},
      {"'ow'sat", "'ow's'at"}, {"shant", "shan't"}, {"shed've", "she'd've"}, {"she'dve", "she'd've"},
      {"she's", "she's"}, {"shouldve", "should've"}, {"shouldnt", "shouldn't"},
      {"shouldnt've", "shouldn't've"}, {"shouldn'tve", "shouldn't've"}, {"somebody'd", "somebodyd"},
      {"somebodyd've", "somebody'd've"}, {"somebody'dve", "somebody'd've"}, {"somebodyll", "somebody'll"},
      {"somebodys", "somebody's"}, {"someoned", "someone'd"}, {"someoned've", "someone'd've"},
      {"someone'dve", "someone'd've"}, {"someonell", "someone'll"}, {"someones", "someone's"},
      {"somethingd", "something'd"}, {"somethingd've", "something'd've"}, {"something'dve", "something'd've"},
      {"somethingll", "something'll"}, {"thats", "that's"}, {"thered", "there'd"}, {"thered've", "there'd've"},
      {"there'dve", "there'd've"}, {"therere", "there're"}, {"theres", "there's"}, {"theyd", "they'd"},
      {"theyd've", "they'd've"}, {"they'dve", "they'd've"}, {"theyll", "they'll"}, {"theyre", "they're"},
      {"theyve", "they've"}, {"twas", "'twas"}, {"wasnt", "wasn't"}, {"wed've", "we'd've"},
      {"we'dve", "we'd've"}, {"weve", "we've"}, {"werent", "weren't"}, {"whatll", "what'll"},
      {"whatre", "what're"}, {"whats", "what's"}, {"whatve", "what've"}, {"whens", "when's"},
      {"whered", "where'd"}, {"wheres", "where's"}, {"whereve", "where've"}, {"whod", "who'd"},
      {"whod've", "who'd've"}, {"who'dve", "who'd've"}, {"wholl", "who'll"}, {"whos", "who's"},
      {"whove", "who've"}, {"whyll", "why'll"}, {"whyre", "why're"}, {"whys", "why's"}, {"wont", "won't"},
      {"wouldve", "would've"}, {"wouldnt", "wouldn't"}, {"wouldnt've", "wouldn't've"},
      {"wouldn'tve", "wouldn't've"}, {"yall", "y'all"}, {"yall'll", "y'all'll"}, {"y'allll", "y'all'll"},
      {"yall'd've", "y'all'd've"}, {"y'alld've", "y'all'd've"}, {"y'all'dve", "y'all'd've"},
      {"youd", "you'd"}, {"youd've", "you'd've"}, {"you'dve", "you'd've"}, {"youll", "you'll"},
      {"youre", "you're"}, {"youve", "you've"}};
  // clang-format on
  return k;
}

const std::unordered_map<std::string, std::string>& number_words() {
  static const std::unordered_map<std::string, std::string> k = {{"none", "0"},  {"zero", "0"},  {"one", "1"},  {"two", "2"},
                                                                 {"three", "3"}, {"four", "4"},  {"five", "5"}, {"six", "6"},
                                                                 {"seven", "7"}, {"eight", "8"}, {"nine", "9"}, {"ten", "10"}};
  return k;
}

bool has_digit_comma_digit(const std::string& s) {
  for (size_t i = 1; i + 1 < s.size(); ++i)
    if (s[i] == ',' && std::isdigit(static_cast<unsigned char>(s[i - 1])) && std::isdigit(static_cast<unsigned char>(s[i + 1])))
      return true;
  return false;
}

std::string process_punctuation(const std::string& in) {
  static const char* kPunct[] = {";",  "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+",
                                 "\\", "_", "-", ">", "<",  "@", "`", ",", "?", "!"};
  std::string out = in;
  const bool comma_number = has_digit_comma_digit(in);
  for (const char* p : kPunct) {
    const std::string ps(p);
    // Removed when it touches a space (or the answer has a number with a thousands comma),
    // else replaced by a space.
    const bool remove = in.find(ps + " ") != std::string::npos || in.find(" " + ps) != std::string::npos || comma_number;
    std::string next;
    for (char c : out) {
      if (c == ps[0]) {
        if (!remove) next += ' ';
      } else {
        next += c;
      }
    }
    out = next;
  }
  // Periods not followed by a digit are dropped ("yes." -> "yes", "2.5" kept).
  std::string res;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == '.' && !(i + 1 < out.size() && std::isdigit(static_cast<unsigned char>(out[i + 1])))) continue;
    res += out[i];
  }
  return res;
}

std::string process_digit_article(const std::string& in) {
  std::istringstream words(in);
  std::vector<std::string> kept;
  std::string w;
  while (words >> w) {
    for (char& c : w) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    auto n = number_words().find(w);
    if (n != number_words().end()) w = n->second;
    if (w == "a" || w == "an" || w == "the") continue;
    kept.push_back(w);
  }
  std::string out;
  for (auto& k : kept) {
    auto c = contractions().find(k);
    if (c != contractions().end()) k = c->second;
    out += (out.empty() ? "" : " ") + k;
  }
  return out;
}

std::string clean_whitespace(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\t') c = ' ';
  const size_t b = s.find_first_not_of(' '), e = s.find_last_not_of(' ');
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

}  // namespace

std::string clean_vqa_whitespace(std::string s) { return clean_whitespace(std::move(s)); }

std::string normalize_vqa_answer(const std::string& answer) {
  return process_digit_article(process_punctuation(clean_whitespace(answer)));
}

double vqa_soft_score(int count) {
  if (count <= 0) return 0.0;
  if (count == 1) return 0.3;
  if (count == 2) return 0.6;
  if (count == 3) return 0.9;
  return 1.0;
}

}  // namespace vlmo
