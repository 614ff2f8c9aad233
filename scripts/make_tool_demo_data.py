"""Write the tool-calling demo data: src/qwentune/data/demo/tool_calls.json (OpenAI `messages` + `tools`).

Generated, not hand-written: five tool schemas, English and Chinese request phrasings, argument
values drawn with a fixed seed. Held-out records (`"split": "test"`) use phrasings and values
that never occur in training, so evaluation measures whether the model learned the call
format and the choice of function rather than memorised requests. Each record offers two of
the five tools (the right one and one other), so the model has to pick.

    python scripts/make_tool_demo_data.py          # rewrites the file (same seed, same bytes)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "qwentune" / "data" / "demo" / "tool_calls.json"
SEED = 11


def schema(name: str, description: str, properties: dict, required: list[str]) -> dict:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


TOOLS = {
    "get_weather": schema(
        "get_weather", "Current weather of a city",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"],
    ),
    "convert_currency": schema(
        "convert_currency", "Convert an amount of money between currencies",
        {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}}, ["amount", "from", "to"],
    ),
    "set_timer": schema("set_timer", "Start a countdown timer", {"minutes": {"type": "integer"}}, ["minutes"]),
    "translate": schema(
        "translate", "Translate a text into another language",
        {"text": {"type": "string"}, "target": {"type": "string"}}, ["text", "target"],
    ),
    "search_restaurants": schema(
        "search_restaurants", "Find restaurants in a city",
        {"city": {"type": "string"}, "cuisine": {"type": "string"}}, ["city"],
    ),
}

# Values: (training, held-out). Chinese requests use Chinese city names.
CITIES = (["Paris", "Berlin", "Tokyo", "Madrid", "Toronto", "Cairo", "Sydney", "Rome", "Dublin", "Seoul"], ["Lisbon", "Oslo", "Nairobi", "Lima"])
CITIES_ZH = (["北京", "上海", "广州", "深圳", "成都", "杭州", "西安", "南京", "武汉", "重庆"], ["昆明", "厦门", "青岛", "大连"])
CURRENCIES = (["USD", "EUR", "JPY", "GBP", "CNY"], ["CHF", "CAD"])
AMOUNTS = ([20, 50, 75, 100, 150, 200, 300, 500, 1000], [40, 250, 800])
MINUTES = ([3, 5, 10, 12, 15, 20, 25, 30, 45], [7, 18, 40])
PHRASES = (["good morning", "thank you very much", "where is the station", "I love this city", "see you tomorrow"], ["happy birthday", "the bill, please"])
PHRASES_ZH = (["早上好", "非常感谢", "火车站在哪里", "我爱这座城市", "明天见"], ["生日快乐", "请结账"])
LANGUAGES = {"French": "French", "German": "German", "Spanish": "Spanish", "Japanese": "Japanese"}
LANGUAGES_ZH = {"英语": "English", "法语": "French", "日语": "Japanese", "德语": "German"}
CUISINES = (["italian", "sushi", "vegetarian", "mexican", "indian"], ["thai", "korean"])
CUISINES_ZH = (["川菜", "粤菜", "火锅", "素食", "面馆"], ["烧烤", "东北菜"])

# Phrasings: (training, held-out), "{}" fields filled by make_call.
EN = {
    "get_weather": (["What's the weather in {city}?", "Is it raining in {city} right now?", "How warm is it in {city} today?", "Weather report for {city}, please."],
                    ["I'm flying to {city} tonight; what's it like there?", "Tell me the current conditions in {city}."]),
    "convert_currency": (["Convert {amount} {from} to {to}.", "How much is {amount} {from} in {to}?", "What do {amount} {from} come to in {to}?"],
                         ["I have {amount} {from}; how many {to} is that?", "Change {amount} {from} into {to} for me."]),
    "set_timer": (["Set a timer for {minutes} minutes.", "Start a {minutes}-minute timer.", "Remind me in {minutes} minutes."],
                  ["Count down {minutes} minutes for my tea.", "I need an alarm {minutes} minutes from now."]),
    "translate": (["Translate '{text}' into {target}.", "How do you say '{text}' in {target}?"],
                  ["What is '{text}' in {target}?", "Put '{text}' into {target}, please."]),
    "search_restaurants": (["Find {cuisine} restaurants in {city}.", "Any good {cuisine} places to eat in {city}?"],
                           ["I'm hungry in {city}; suggest somewhere {cuisine}.", "Where can I get {cuisine} food in {city}?"]),
}
ZH = {
    "get_weather": (["{city}今天天气怎么样？", "{city}现在下雨吗？", "帮我查一下{city}的天气。"], ["我今晚要去{city}，那边天气如何？", "告诉我{city}当前的天气情况。"]),
    "convert_currency": (["把{amount}{from}换算成{to}。", "{amount}{from}等于多少{to}？"], ["我有{amount}{from}，能换多少{to}？", "请帮我把{amount}{from}兑换成{to}。"]),
    "set_timer": (["设置一个{minutes}分钟的计时器。", "{minutes}分钟后提醒我。"], ["帮我倒计时{minutes}分钟。", "定个{minutes}分钟的闹钟。"]),
    "translate": (["把“{text}”翻译成{target_zh}。", "“{text}”用{target_zh}怎么说？"], ["“{text}”的{target_zh}是什么？", "请将“{text}”译成{target_zh}。"]),
    "search_restaurants": (["在{city}找一家{cuisine}餐厅。", "{city}有什么好吃的{cuisine}？"], ["我在{city}饿了，推荐一家{cuisine}。", "{city}哪里能吃到{cuisine}？"]),
}


def make_call(rng: random.Random, tool: str, lang: str, held_out: bool) -> tuple[str, dict]:
    """(the user's request, the call's arguments)."""
    part = 1 if held_out else 0
    fields: dict = {}
    if tool in ("get_weather", "search_restaurants"):
        fields["city"] = rng.choice((CITIES_ZH if lang == "zh" else CITIES)[part])
    if tool == "search_restaurants":
        fields["cuisine"] = rng.choice((CUISINES_ZH if lang == "zh" else CUISINES)[part])
    if tool == "convert_currency":
        fields["amount"] = rng.choice(AMOUNTS[part])
        fields["from"], fields["to"] = rng.sample(CURRENCIES[0] + (CURRENCIES[1] if held_out else []), 2)
    if tool == "set_timer":
        fields["minutes"] = rng.choice(MINUTES[part])
    if tool == "translate":
        fields["text"] = rng.choice((PHRASES_ZH if lang == "zh" else PHRASES)[part])
        names = LANGUAGES_ZH if lang == "zh" else LANGUAGES
        name = rng.choice(sorted(names))
        fields["target"], fields["target_zh"] = names[name], name
    request = rng.choice((ZH if lang == "zh" else EN)[tool][part]).format(**fields)
    arguments = {k: v for k, v in fields.items() if k != "target_zh"}
    return request, arguments


def result_and_answer(tool: str, arguments: dict, lang: str, rng: random.Random) -> tuple[dict, str]:
    if tool == "get_weather":
        result = {"temperature": rng.randint(-5, 35), "condition": rng.choice(["sunny", "cloudy", "rain"])}
        answer = (f"{arguments['city']}现在{result['temperature']}度，{ {'sunny': '晴', 'cloudy': '多云', 'rain': '有雨'}[result['condition']] }。"
                  if lang == "zh" else f"It is {result['temperature']} °C and {result['condition']} in {arguments['city']}.")
    elif tool == "convert_currency":
        result = {"converted": round(arguments["amount"] * rng.uniform(0.5, 1.5), 2)}
        answer = (f"{arguments['amount']} {arguments['from']} 约合 {result['converted']} {arguments['to']}。" if lang == "zh"
                  else f"{arguments['amount']} {arguments['from']} is about {result['converted']} {arguments['to']}.")
    elif tool == "set_timer":
        result = {"status": "started"}
        answer = f"好的，{arguments['minutes']}分钟计时已开始。" if lang == "zh" else f"Done: a {arguments['minutes']}-minute timer is running."
    else:
        result = {"restaurants": ["Da Luca", "Golden Bowl"]}
        answer = "找到两家：Da Luca 和 Golden Bowl。" if lang == "zh" else "Two options: Da Luca and Golden Bowl."
    return result, answer


def record(rng: random.Random, number: int, tool: str, lang: str, held_out: bool, full_loop: bool) -> dict:
    request, arguments = make_call(rng, tool, lang, held_out)
    offered = [tool, rng.choice([t for t in TOOLS if t != tool])]
    rng.shuffle(offered)
    call_id = f"call_{number}"
    messages = [
        {"role": "user", "content": request},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": tool, "arguments": json.dumps(arguments, ensure_ascii=False)}}
        ]},
    ]
    if full_loop:
        result, answer = result_and_answer(tool, arguments, lang, rng)
        messages += [
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result, ensure_ascii=False)},
            {"role": "assistant", "content": answer},
        ]
    data = {"id": f"tools-{number:04d}", "messages": messages, "tools": [TOOLS[t] for t in offered]}
    if held_out:
        data["split"] = "test"
    return data


def build() -> list[dict]:
    rng = random.Random(SEED)
    records, seen = [], set()
    plan = [(tool, lang, False) for _ in range(32) for tool in TOOLS for lang in ("en", "zh")]  # 320 for training
    plan += [(tool, lang, True) for _ in range(4) for tool in TOOLS for lang in ("en", "zh")]  # 40 held out
    for tool, lang, held_out in plan:
        for _ in range(50):  # distinct requests only
            candidate = record(rng, len(records), tool, lang, held_out, full_loop=not held_out and tool != "translate" and rng.random() < 0.3)
            key = candidate["messages"][0]["content"]
            if key not in seen:
                seen.add(key)
                records.append(candidate)
                break
    return records


if __name__ == "__main__":
    data = build()
    OUT.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(data)} records, {sum('split' in r for r in data)} held out")
