"""Every entry of the shipped G2P dictionary, checked in at least three sentences.

The shipped dictionary is applied to every Chinese request, so it may only hold readings that are
right wherever the word stands. Each row gives the correct reading (numeric pinyin, one syllable
per character, written here from the dictionary of standard Mandarin, not from the file) and
sentences in which the word must come out with the forced reading.
"""
import pytest

from cosyvoice.text.frontend import TextFrontend
from cosyvoice.text.g2p_dict import DEFAULT_G2P_DICT, G2PDictionary
from cosyvoice.text.markup import PinyinSyllable, TextRun, render

EXAMPLE_DICT = DEFAULT_G2P_DICT.parent / "examples" / "G2P_replace_dict.example.jsonl"

SHIPPED = {
    "重庆": ("chong2 qing4", ["我明天去重庆出差。", "重庆的火锅很有名。", "他在重庆读了四年大学。"]),
    # 隆重/郑重/庄重 guard 重庆 where a match would straddle two words: 隆重庆祝 is lóngzhòng qìngzhù
    "隆重": ("long2 zhong4", ["婚礼办得很隆重。", "公司隆重推出新产品。", "大家隆重庆祝这个节日。"]),
    "郑重": ("zheng4 zhong4", ["他郑重地道了歉。", "我郑重声明。", "双方郑重庆祝签约成功。"]),
    "庄重": ("zhuang1 zhong4", ["会场气氛庄重。", "她穿得很庄重。", "仪式庄重而简朴。"]),
    "鸭绿江": ("ya1 lu4 jiang1", ["鸭绿江的水很清。", "我们沿着鸭绿江散步。", "丹东在鸭绿江边。"]),
    "朝阳区": ("chao2 yang2 qu1", ["我住在北京朝阳区。", "朝阳区今天下雨了。", "他在朝阳区上班。"]),
    "朝阳公园": ("chao2 yang2 gong1 yuan2", ["周末去朝阳公园跑步。", "朝阳公园的湖很大。", "朝阳公园附近有很多餐厅。"]),
    "朝鲜": ("chao2 xian3", ["朝鲜半岛的冬天很冷。", "他会说朝鲜语。", "这是一家朝鲜冷面馆。"]),
    "蚌埠": ("beng4 bu4", ["蚌埠是安徽的城市。", "我坐高铁去蚌埠。", "蚌埠的烧饼很好吃。"]),
    "番禺": ("pan1 yu2", ["番禺在广州南边。", "他家住番禺区。", "番禺的早茶很有名。"]),
    "哪吒": ("ne2 zha1", ["哪吒是神话里的英雄。", "孩子们都喜欢看哪吒的电影。", "哪吒闹海的故事大家都知道。"]),
    "银行": ("yin2 hang2", ["我去银行取钱。", "这家银行九点开门。", "他在银行工作了十年。"]),
    "薄荷": ("bo4 he5", ["我喜欢薄荷糖。", "花盆里种着薄荷。", "这杯茶有薄荷的味道。"]),
    "咖喱": ("ga1 li2", ["今天晚饭吃咖喱鸡。", "咖喱有点辣。", "他做的咖喱饭很香。"]),
    "剥削": ("bo1 xue1", ["工人们反对剥削。", "这是一种剥削。", "他们被剥削了很多年。"]),
    "埋怨": ("man2 yuan4", ["别总是埋怨别人。", "她埋怨我来晚了。", "他没有一句埋怨。"]),
    "挣扎": ("zheng1 zha2", ["小鸟在网里挣扎。", "他挣扎着站了起来。", "经过一番挣扎，她还是答应了。"]),
    "倔强": ("jue2 jiang4", ["这个孩子很倔强。", "她倔强地抬起头。", "倔强的性格让他吃了不少苦。"]),
    "宿舍": ("su4 she4", ["学生宿舍十点关门。", "我们住在同一间宿舍。", "宿舍楼下有个小卖部。"]),
    "勉强": ("mian3 qiang3", ["他勉强笑了笑。", "这个理由很勉强。", "不要勉强自己。"]),
}

# Words whose reading depends on the sentence, straddle-prone words and common words the model
# reads well: none may be forced by default; all remain available in the opt-in example.
NOT_SHIPPED = ["朝阳", "行长", "长城", "行为", "行业", "大夫", "便宜", "曾经", "会计", "出差", "似的", "厦门",
               "大厦", "因为", "快乐", "还是", "还有", "觉得", "应该", "音乐", "重要", "骨头"]


@pytest.fixture(scope="module")
def frontend():
    return TextFrontend()


def test_table_covers_exactly_the_shipped_file():
    assert sorted(G2PDictionary(DEFAULT_G2P_DICT).entries) == sorted(SHIPPED)


@pytest.mark.parametrize("word", sorted(SHIPPED))
def test_forced_reading_is_the_correct_one(word):
    expected = SHIPPED[word][0].split()
    assert len(expected) == len(word)
    replacement = G2PDictionary(DEFAULT_G2P_DICT).entries[word]
    position = 0
    for item in replacement:            # the replacement spells the word, one syllable per character
        if isinstance(item, TextRun):
            assert item.text == word[position:position + len(item.text)]
            position += len(item.text)
        else:
            assert isinstance(item, PinyinSyllable) and item.numeric == expected[position], (word, position)
            position += 1
    assert position == len(word)
    assert any(isinstance(item, PinyinSyllable) for item in replacement)


@pytest.mark.parametrize("word, sentence", [(w, s) for w in sorted(SHIPPED) for s in SHIPPED[w][1]])
def test_forced_reading_reaches_the_engines_in_context(frontend, word, sentence):
    assert word in sentence
    forced = render(list(G2PDictionary(DEFAULT_G2P_DICT).entries[word]))
    result = frontend.process(sentence)
    assert forced in result.marked
    assert result.pieces == [result.marked]


def test_every_word_has_three_sentences():
    assert all(len(set(sentences)) >= 3 for _, sentences in SHIPPED.values())


def test_context_dependent_words_are_only_in_the_example():
    shipped = G2PDictionary(DEFAULT_G2P_DICT).entries
    example = G2PDictionary(EXAMPLE_DICT).entries
    assert [w for w in NOT_SHIPPED if w in shipped] == []
    assert [w for w in NOT_SHIPPED if w not in example] == []


def test_morning_sun_is_left_to_the_model_but_the_district_is_forced(frontend):
    assert frontend.process("一轮朝阳升起来了。").marked == "一轮朝阳升起来了。"
    assert frontend.process("北京朝阳区到了。").marked == "北京[ch][áo]阳区到了。"
    assert frontend.process("我们隆重庆祝新年。").marked == "我们隆[zh][òng]庆祝新年。"
